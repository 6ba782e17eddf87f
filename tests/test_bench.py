"""The peer benchmark's inputs (bench/peer.yaml, bench/peer_prompts.txt, rlaif.rewards:length_200) still describe
the workload of DESIGN.md section 8 that bench/bench_vs_trl.py compares with TRL."""

from pathlib import Path

import pytest

from rlaif.config import load_config
from rlaif.data.sources import load_prompt_mix
from rlaif.rewards import length_200
from rlaif.rl.algorithms import needs_old_logprobs, needs_reference

from .conftest import REPO


def test_length_reward_is_minus_distance_to_200_characters_over_200():
    assert length_200(["p"] * 4, ["", "x" * 200, "y" * 450, "z" * 150]) == [-1.0, 0.0, -1.25, -0.25]


def test_peer_config_is_the_peer_workload():
    cfg = load_config(REPO / "bench/peer.yaml", [f"data.prompts={REPO / 'bench/peer_prompts.txt'}"])
    assert cfg.policy.model.path == "builtin:smollm2-135m" and cfg.policy.model.dtype == "float32"
    assert cfg.rl.prompts_per_step * cfg.rollout.n_samples == 32 and cfg.rollout.n_samples == 2
    assert cfg.rollout.max_new_tokens == 64 and cfg.rollout.temperature == 1.0 and cfg.policy.lr == 1e-6
    assert cfg.rl.algorithm == "grpo" and cfg.rl.reward_functions == ["rlaif.rewards:length_200"]
    assert not cfg.rl.use_preference_model and cfg.rl.label_every > cfg.trainer.steps
    # beta = 0 and one epoch: neither a reference pass nor an "old" log-prob pass runs (as in TRL)
    assert not needs_reference(cfg.rl) and not needs_old_logprobs(cfg.rl)
    assert cfg.data.eval_fraction == 0.0  # all 32 prompts train, as TRL's dataset does
    prompts = load_prompt_mix(cfg.data.prompts).prompts
    assert len(prompts) == 32  # 32 distinct questions (duplicates would be dropped)



# -- bench/bench_vs_trl.py's four cells: what each side runs ----------------------------------------------------------

def _bench_vs_trl():
    import sys

    sys.path.insert(0, str(REPO / "bench"))
    import bench_vs_trl

    return bench_vs_trl


def _cell_config(tmp_path, name: str, extra: tuple[str, ...] = ()):
    """The Config `rlaif train` gets for the bench's side `name` on the full workload, and its --config file."""
    bench = _bench_vs_trl()
    out = tmp_path / name
    out.mkdir()
    args = bench.rlaif_args(name, 4, bench.workload(False), out, extra)
    assert args[0] == "--config"
    return load_config(args[1], args[2:]), Path(args[1])


def _leaves(node, prefix=""):
    import dataclasses

    if dataclasses.is_dataclass(node):
        return {k: v for f in dataclasses.fields(node)
                for k, v in _leaves(getattr(node, f.name), f"{prefix}{f.name}.").items()}
    return {prefix[:-1]: node}


def test_same_work_cell_labels_nothing_and_runs_no_reference_pass(tmp_path):
    """The "same work as TRL" side is bench/peer.yaml as it is: no AI labels during RL (a rule judges the pairs
    before RL, the labeler model is never loaded), no reference pass, no old log-prob pass, fp32, the 32-completion
    step. Catches the same-work side picking up labeling or a KL pass (its ratio to TRL would then measure monitoring,
    not the same work), or the old name "default" no longer reaching it."""
    for name in ("same", "default"):
        cfg, path = _cell_config(tmp_path, name)
        assert path == REPO / "bench/peer.yaml"
        assert cfg.labeler.function and cfg.rl.label_every > cfg.trainer.steps
        assert not needs_reference(cfg.rl) and not needs_old_logprobs(cfg.rl)
        assert cfg.policy.model.dtype == "float32" and cfg.rl.prompts_per_step * cfg.rollout.n_samples == 32


def test_set_flags_reach_their_own_sides_only(tmp_path):
    """--same-set goes to the same-work side (and the other variants, over their own overrides), --defaults-set to
    the defaults side, neither to the other. Catches an override (say --same-set policy.model.dtype=bfloat16, to
    measure same work in bf16) silently changing the defaults side too, or being dropped."""
    bench = _bench_vs_trl()
    args = bench.build_parser().parse_args(["--variants", "same,defaults,mb16", "--same-set", "rollout.temperature=0.5",
                                            "--same-set", "policy.model.dtype=bfloat16",
                                            "--defaults-set", "rl.kl_coef=0.05"])
    extra = bench.side_overrides(args, ["same", "defaults", "mb16"])
    same, _ = _cell_config(tmp_path, "same", extra["same"])
    mb16, _ = _cell_config(tmp_path, "mb16", extra["mb16"])
    dflt, _ = _cell_config(tmp_path, "defaults", extra["defaults"])
    assert same.rollout.temperature == mb16.rollout.temperature == 0.5 and dflt.rollout.temperature == 1.0
    assert same.policy.model.dtype == mb16.policy.model.dtype == "bfloat16" and mb16.policy.micro_batch_size == 16
    assert dflt.rl.kl_coef == 0.05 and same.rl.kl_coef == mb16.rl.kl_coef == 0.0


def test_defaults_cell_is_peer_yaml_with_exactly_rlaifs_defaults(tmp_path):
    """The "defaults" side labels every step's pairs with the labeler model (SmolLM2), measures KL to the reference
    every step, and leaves the policy's dtype to rlaif's default; every other key equals the same-work side's. Catches
    a defaults side that still labels by rule, labels never, skips the reference pass, pins fp32, or differs from the
    same work in anything but rlaif's defaults (then the two ratios would not isolate what the defaults cost)."""
    import yaml

    bench = _bench_vs_trl()
    same, _ = _cell_config(tmp_path, "same")
    dflt, path = _cell_config(tmp_path, "defaults")
    assert path.parent == tmp_path / "defaults" and "dtype" not in yaml.safe_load(path.read_text())["policy"]["model"]
    assert dflt.labeler.function == "" and dflt.labeler.model.path == "builtin:smollm2-135m"
    assert dflt.rl.label_every == 1 and dflt.rl.measure_kl and needs_reference(dflt.rl)
    assert dflt.rl.kl_coef == 0.0 and not needs_old_logprobs(dflt.rl)  # beta = 0 stays: the workload's objective
    a, b, default = _leaves(same), _leaves(dflt), _leaves(load_config(None))
    differ = {k for k in a if a[k] != b[k]} - {"output_dir"}  # each side its own run folder
    assert differ <= set(bench.DEFAULTS_UNSET) and {"labeler.function", "rl.label_every", "rl.measure_kl"} <= differ
    assert all(b[k] == default[k] for k in bench.DEFAULTS_UNSET)  # each is rlaif's default (dtype: resolved)


def test_four_cells_are_the_default_and_old_flags_keep_their_sides():
    """No flags (or --cells): rlaif defaults and same work against TRL fp32 and TRL bf16. --trl alone keeps the
    old rlaif side ("same"), --variants alone the old TRL sides. Catches the cells running one TRL precision twice,
    or the README's `--trl trl` command silently gaining the slow defaults side."""
    bench = _bench_vs_trl()
    assert bench.TRL_VARIANTS["trl"]["bf16"] is False and bench.TRL_VARIANTS["trl_bf16"]["bf16"] is True
    parser = bench.build_parser()
    for argv in ([], ["--cells"]):
        assert bench.sides_from_args(parser.parse_args(argv), parser) == (["defaults", "same"], ["trl", "trl_bf16"])
    assert bench.sides_from_args(parser.parse_args(["--trl", "trl"]), parser) == (["same"], ["trl"])
    assert bench.sides_from_args(parser.parse_args(["--variants", "default,async"]), parser) == \
        (["same", "async"], ["trl", "trl_1t"])



def test_goal_is_measured_against_the_faster_trl_side_of_each_round():
    """The goal line divides rlaif defaults by whichever TRL side was faster in that round (bf16 in round 1, fp32 in
    round 2 here), median over rounds. Catches a ratio against a fixed TRL side (fp32: flatters rlaif whenever bf16
    is faster) or against the rounds' mean instead of the same round."""
    bench = _bench_vs_trl()

    def r(cps: float) -> dict:
        return {"cps": cps}

    results = [{"defaults": r(3.0), "same": r(4.0), "trl": r(1.0), "trl_bf16": r(1.5)},
               {"defaults": r(5.0), "same": r(6.0), "trl": r(2.0), "trl_bf16": r(1.0)}]
    lines = bench.ratio_table(results, ["defaults", "same"], ["trl", "trl_bf16"])
    assert lines[-2] == "the faster TRL side per round: trl_bf16, trl"
    assert "2.25x" in lines[-1] and "NOT met" in lines[-1]  # median of 3.0/1.5 and 5.0/2.0
    assert lines[2].startswith("rlaif defaults [defaults]") and "2.75x (3.00, 2.50)" in lines[2]  # vs TRL fp32


def test_lora_variants_pair_with_their_trl_kind():
    """`--variants default,lora` runs the same-work side ("default" is its old name) against TRL's default sides and
    rlaif's LoRA side against their LoRA twins; --trl picks sides by hand, and a LoRA side with no TRL LoRA side to be
    compared with (or a full side with only LoRA ones) is refused. Catches a LoRA ratio taken against full
    fine-tuning TRL (or the reverse): the LoRA step is cheaper, so such a ratio would flatter or wrong either side."""
    bench = _bench_vs_trl()
    parser = bench.build_parser()

    def sides(*argv):
        return bench.sides_from_args(parser.parse_args(list(argv)), parser)

    assert sides("--variants", "default,lora") == (["same", "lora"], ["trl", "trl_1t", "trl_lora", "trl_lora_1t"])
    assert sides("--variants", "defaults,lora") == (["defaults", "lora"],
                                                     ["trl", "trl_1t", "trl_lora", "trl_lora_1t"])
    assert sides("--variants", "lora") == (["lora"], ["trl_lora", "trl_lora_1t"])
    assert sides("--variants", "defaults,lora", "--trl", "trl_bf16,trl_lora_bf16") == \
        (["defaults", "lora"], ["trl_bf16", "trl_lora_bf16"])
    assert sides("--variants", "lora", "--trl", "") == (["lora"], [])  # rlaif only
    for argv in (["--variants", "lora", "--trl", "trl"], ["--variants", "defaults", "--trl", "trl_lora"]):
        with pytest.raises(SystemExit):
            sides(*argv)
    for t in ("trl", "trl_bf16", "trl_1t", "trl_bf16_1t"):  # each TRL side's twin: the same but LoRA
        twin = bench.TRL_VARIANTS[bench.lora_twin(t)]
        assert twin == {**bench.TRL_VARIANTS[t], "lora": True} and not bench.TRL_VARIANTS[t].get("lora")
    assert bench.paired("lora", ["trl", "trl_lora", "trl_lora_1t"]) == ["trl_lora", "trl_lora_1t"]
    assert bench.paired("default", ["trl", "trl_lora"]) == ["trl"]


def test_lora_cell_is_the_defaults_cell_with_lora(tmp_path):
    """The "lora" side is the defaults side plus LoRA (rank 16, alpha 32, rlaif's default target modules) and the
    tenfold lr the TRL LoRA sides get too; nothing else differs, and --defaults-set reaches it. Catches a LoRA cell
    that drifts from the defaults cell (then the two ratios would not isolate what LoRA changes) or an lr that differs
    from TRL's."""
    bench = _bench_vs_trl()
    args = bench.build_parser().parse_args(["--variants", "defaults,lora", "--defaults-set", "rl.kl_coef=0.05",
                                            "--same-set", "rollout.temperature=0.5"])
    extra = bench.side_overrides(args, ["defaults", "lora"])
    assert extra["lora"] == extra["defaults"] == ["rl.kl_coef=0.05"]
    dflt, _ = _cell_config(tmp_path, "defaults")
    lora, _ = _cell_config(tmp_path, "lora")
    assert lora.policy.lora.rank == bench.LORA["rank"] == 16 and lora.policy.lora.alpha == bench.LORA["alpha"] == 32
    assert lora.policy.lr == bench.LORA["lr"] == 1e-5 and dflt.policy.lr == 1e-6 and dflt.policy.lora.rank == 0
    a, b = _leaves(dflt), _leaves(lora)
    assert {k for k in a if a[k] != b[k]} - {"output_dir"} == {"policy.lora.rank", "policy.lora.alpha", "policy.lr"}


def test_lora_ratios_are_taken_against_the_trl_lora_sides_only():
    """With LoRA sides, each rlaif side's row has ratios only against TRL sides of its kind ("-" against the rest),
    its "faster" ratio is against the faster side of its kind in each round, and one line per rlaif side gives that
    ratio (rlaif defaults / the faster TRL; rlaif lora / the faster TRL LoRA); the goal line stays last and is still
    the defaults side against the faster full fine-tuning TRL side. Catches a LoRA row divided by a faster full-model
    TRL side or the reverse."""
    import re

    bench = _bench_vs_trl()

    def r(cps: float) -> dict:
        return {"cps": cps}

    results = [{"defaults": r(3.0), "lora": r(4.0), "trl": r(1.0), "trl_1t": r(1.5), "trl_lora": r(2.0),
                "trl_lora_1t": r(1.0)},
               {"defaults": r(5.0), "lora": r(6.0), "trl": r(2.0), "trl_1t": r(1.0), "trl_lora": r(2.0),
                "trl_lora_1t": r(3.0)}]
    trls = ["trl", "trl_1t", "trl_lora", "trl_lora_1t"]
    lines = bench.ratio_table(results, ["defaults", "lora"], trls)
    defaults_row, lora_row = lines[2], lines[3]
    assert defaults_row.startswith("rlaif defaults [defaults]") and lora_row.startswith("rlaif defaults LoRA [lora]")
    cells = {row: re.split(r"\s{2,}", row.strip())[1:] for row in (defaults_row, lora_row)}
    assert cells[defaults_row] == ["2.75x (3.00, 2.50)", "3.50x (2.00, 5.00)", "-", "-", "2.25x (2.00, 2.50)"]
    assert cells[lora_row] == ["-", "-", "2.50x (2.00, 3.00)", "3.00x (4.00, 2.00)", "2.00x (2.00, 2.00)"]
    assert "the faster TRL side per round: trl_1t, trl" in lines
    assert "the faster TRL LoRA side per round: trl_lora, trl_lora_1t" in lines
    assert "rlaif defaults [defaults] / the faster TRL side:  2.25x (2.00, 2.50)" in lines
    assert "rlaif defaults LoRA [lora] / the faster TRL LoRA side:  2.00x (2.00, 2.00)" in lines
    assert lines[-1].startswith("goal (issue 18)") and "2.25x" in lines[-1]


# -- bench/bench_mfu.py's FLOP counts against torch's FlopCounterMode ----------------------------------------------

def _tiny_llama(tied: bool = True):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=tied,
                      attn_implementation="eager")  # eager: attention is plain matmuls the counter sees
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def _bench_mfu():
    import sys

    sys.path.insert(0, str(REPO / "bench"))
    import bench_mfu

    return bench_mfu


def _rl_batch():
    """Two samples of unequal prompt and response lengths, as rlaif.rl.logprobs packs them."""
    import torch

    from rlaif.rl.batch import Batch

    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 512, (n,), generator=g).tolist() for n in (40, 25)]
    responses = [torch.randint(3, 512, (n,), generator=g).tolist() for n in (30, 55)]
    return Batch.from_token_lists(prompts, responses, 0, prompt=["", ""], response=["", ""])


def test_matmul_params_split_body_and_lm_head():
    """A tied embedding is the LM head's weight, counted once as the head; an untied input embedding is a lookup,
    norm weights no matmul: counting the embedding (or the head twice) would inflate every phase's FLOPs by ~20% on
    SmolLM2."""
    mfu = _bench_mfu()
    for tied in (True, False):
        model = _tiny_llama(tied)
        body, head = mfu.matmul_params(model)
        assert head == 512 * 128
        assert body == sum(p.numel() for p in model.model.layers.parameters() if p.dim() == 2)


def test_update_and_reference_flops_match_torch_flop_counter():
    """update_flops (6 N T + 12 L h s T, the LM head on response positions only) and forward_flops (a third of it)
    against FlopCounterMode over rlaif's own response_logprobs (packed=False: one forward per sequence, so the
    attention the counter sees is each sequence's own): within 1% (measured: exact). Counting the LM head over the
    prompt tokens too (6 N T as gpu_check.train_flops does for a plain LM loss: +5.7% here) or counting forward only
    for the update fails this."""
    from torch.utils.flop_counter import FlopCounterMode

    from rlaif.rl.logprobs import batch_logprobs, response_logprobs

    mfu = _bench_mfu()
    model, batch = _tiny_llama(), _rl_batch()
    body, head = mfu.matmul_params(model)
    seqs = mfu.batch_seqs(batch)
    assert seqs == [(70, 30), (80, 55)]
    with FlopCounterMode(display=False) as counter:
        response_logprobs(model, batch, packed=False).sum().backward()
    assert counter.get_total_flops() == pytest.approx(mfu.update_flops(body, head, 2, 128, seqs), rel=0.01)
    with FlopCounterMode(display=False) as counter:
        batch_logprobs(model, batch, 2, packed=False)
    assert counter.get_total_flops() == pytest.approx(mfu.forward_flops(body, head, 2, 128, seqs), rel=0.01)


def test_generation_flops_match_a_kv_cache_decode():
    """generation_flops' matmul part (layers = 0: no attention) against FlopCounterMode's linear-layer FLOPs (mm,
    addmm) of one prompt's prefill and two samples decoded token by token from its KV cache, as vLLM samples n
    completions of a prompt: exact. Counting the prompt once per sample, or the LM head on every prompt token,
    fails this."""
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    mfu = _bench_mfu()
    model = _tiny_llama()
    body, head = mfu.matmul_params(model)
    prompt, lengths = torch.randint(3, 512, (1, 9)), [4, 6]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        cache = model(input_ids=prompt, use_cache=True, logits_to_keep=1).past_key_values
        for r in lengths:
            kv = copy.deepcopy(cache)
            for _ in range(r - 1):  # the last sampled token is never fed back
                kv = model(input_ids=torch.randint(3, 512, (1, 1)), past_key_values=kv, use_cache=True).past_key_values
    ops = counter.get_flop_counts()["Global"]
    linear = sum(v for op, v in ops.items() if str(op).split(".")[1] in ("mm", "addmm"))
    assert linear == mfu.generation_flops(body, head, 0, 128, [(9, lengths)])
    assert mfu.generation_flops(body, head, 2, 128, [(9, lengths)]) > linear  # + the attention term
