import pytest
import torch

from rlaif.data import DataError, PromptLoader, load_prompts, pad_sequences


def test_builtin_prompts_load():
    prompts = load_prompts("builtin:debug")
    assert len(prompts) >= 40 and len({p.id for p in prompts}) == len(prompts)


def test_jsonl_and_txt(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt": "a?", "id": "x"}\n\n{"prompt": "b?"}\n')
    prompts = load_prompts(str(tmp_path / "p.jsonl"))
    assert [p.text for p in prompts] == ["a?", "b?"] and prompts[0].id == "x"
    (tmp_path / "p.txt").write_text("one\ntwo\n")
    assert [p.text for p in load_prompts(str(tmp_path / "p.txt"))] == ["one", "two"]


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"prompt": "ok"}\n{"prompt": \n', r"p.jsonl:2: malformed JSON"),
        ('{"prompt": "ok"}\n{"text": "no"}\n', r'p.jsonl:2: expected an object with a string "prompt"'),
        ('{"prompt": "  "}\n', r"p.jsonl:1: empty prompt"),
        ("\n\n", r"no prompts found \(the file is empty\)"),
    ],
)
def test_malformed_prompt_files_name_file_and_line(tmp_path, content, message):
    (tmp_path / "p.jsonl").write_text(content)
    with pytest.raises(DataError, match=message):
        load_prompts(str(tmp_path / "p.jsonl"))


def test_missing_prompt_file():
    with pytest.raises(DataError, match="prompt file not found: /nope.jsonl"):
        load_prompts("/nope.jsonl")


def test_loader_covers_every_prompt_per_epoch_and_resumes():
    prompts = load_prompts("builtin:debug")
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
