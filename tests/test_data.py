import logging
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from rlaif.config import load_config
from rlaif.data.loader import PromptLoader, chat_ids, fit_chat, pad_sequences
from rlaif.data.sources import load_source

from .conftest import REPO


def test_loader_covers_every_prompt_per_epoch_and_resumes():
    prompts = load_source("builtin:debug")
    loader = PromptLoader(prompts, seed=1)
    first_epoch = loader.next(len(prompts))
    assert sorted(p.id for p in first_epoch) == sorted(p.id for p in prompts)
    loader.next(5)
    state = loader.state()
    expected = loader.next(7)
    resumed = PromptLoader(prompts, seed=1)
    resumed.load_state(state)
    assert resumed.next(7) == expected


def test_pad_sequences_action_mask_token_by_token():
    ids, attn, action = pad_sequences([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3, 5, 6], [4, 7, 8, 9, 0]]
    assert attn.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    # action[b, t] marks target ids[b, t+1] as a response token
    assert action.tolist() == [[0, 0, 1, 1], [1, 1, 1, 0]]
    targets = ids[:, 1:]
    assert targets[action.bool()].tolist() == [5, 6, 7, 8, 9]
    assert action.dtype == torch.float32


# --- chat-template encoding within a budget ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok(tiny_path):
    from rlaif.models import load_tokenizer

    return load_tokenizer(tiny_path)


LONG = " ".join(f"word{i}" for i in range(300)) + " so what is the capital of France?"


def test_fit_chat_keeps_the_template_and_the_end_of_the_text(tok):
    header = chat_ids(tok, [{"role": "user", "content": ""}])
    ids, cut = fit_chat(tok, [{"role": "user", "content": LONG}], 40, "data.max_prompt_tokens")
    text = tok.decode(ids)
    assert cut and len(ids) <= 40 and len(ids) >= 38  # cut to the budget, not far below it
    # the chat header and the assistant opener survive; the request at the end of the text survives
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert ids[:3] == header[:3] and ids[-4:] == header[-4:]
    assert "what is the capital of France?" in text and "word0 " not in text
    short = [{"role": "user", "content": "Hi there"}]
    assert fit_chat(tok, short, 40, "k") == (chat_ids(tok, short), False)


def test_fit_chat_drops_the_oldest_turns_first_and_keeps_the_system_message(tok):
    conv = [{"role": "system", "content": "Be kind."},
            {"role": "user", "content": "old question " * 30}, {"role": "assistant", "content": "old answer " * 30},
            {"role": "user", "content": "What now?"}]
    ids, cut = fit_chat(tok, conv, 40, "sl_cai.max_context_tokens")
    assert cut and ids == chat_ids(tok, [conv[0], conv[3]])
    with pytest.raises(ValueError, match=r"sl_cai\.max_context_tokens = 12 leaves no room for the prompt: the chat "
                                         r"template alone takes \d+ tokens"):
        fit_chat(tok, conv, 12, "sl_cai.max_context_tokens")


def test_rollout_encode_prompts_counts_cuts_and_warns_once(tok, caplog):
    from actors.rollout import RolloutWorker

    worker = SimpleNamespace(tokenizer=tok, cfg=load_config(None, ["data.max_prompt_tokens=40"]),
                             warned_truncation=False)
    with caplog.at_level(logging.WARNING, logger="rlaif"):
        ids, cut = RolloutWorker.encode_prompts(worker, [LONG, "Hi", LONG])
        assert cut == 2 and all(len(x) <= 40 for x in ids) and ids[1] == chat_ids(tok, [{"role": "user",
                                                                                            "content": "Hi"}])
        assert tok.decode(ids[0]).startswith("<|im_start|>user\n")
        assert RolloutWorker.encode_prompts(worker, [LONG]) == ([ids[0]], 1)
    warnings = [r for r in caplog.records if "data.max_prompt_tokens = 40" in r.getMessage()]
    assert len(warnings) == 1 and "2 of 3 prompts" in warnings[0].getMessage()


@pytest.mark.parametrize("max_tokens", [31, 32, 63, 64])
def test_pm_encode_stays_within_max_tokens(tok, max_tokens):
    from actors.preference import PreferenceModelWorker

    worker = SimpleNamespace(tokenizer=tok, cfg=load_config(None, [f"preference_model.max_tokens={max_tokens}"]))
    p, r = PreferenceModelWorker.encode(worker, LONG, LONG)
    assert len(p) + len(r) <= max_tokens and len(p) <= max_tokens // 2
    assert len(p) + len(r) >= max_tokens - 2  # both were long: the budget is used
    assert tok.decode(p).startswith("<|im_start|>user\n")  # the chat header is never the part that is cut
    p, r = PreferenceModelWorker.encode(worker, "Hi", "Hello.")
    assert p == chat_ids(tok, [{"role": "user", "content": "Hi"}]) and r[-1] == tok.eos_token_id


# --- bad prompt files through the command line: one clear line, exit 2, nothing written ---------------------------


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("p.csv", b"id,text\n1,hello, world\n", r'p\.csv: missing required column "prompt" .*columns found: '
                                                 r"\['id', 'text'\]"),
        ("p.txt", b"fine\ncaf\xe9\n", r"p\.txt:2: not valid UTF-8"),
        ("p.jsonl", b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n', r"p\.jsonl:2: not valid UTF-8"),
        ("p.csv", b"id,prompt\n1,ok\n2,caf\xe9\n", r"p\.csv:3: not valid UTF-8"),
    ],
)
def test_bad_prompt_file_stops_the_cli_before_anything_is_written(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "rlaif.cli", "train", "--config", "configs/debug.yaml",
                           f"output_dir={out}", f"data.prompts={tmp_path / name}"],
                          cwd=REPO, env={**os.environ, "WANDB_MODE": "offline"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    first = proc.stderr.strip().splitlines()[0]
    assert re.search(message, first), proc.stderr
    assert first.startswith("rlaif: error: ") and not out.exists()
