"""The policy actor's DeepSpeed update vs a plain PyTorch loop on the same batch: tokens per second, side by side.

    python bench/bench_update.py [--rounds 3] [--quick] [key=value overrides of bench/peer.yaml ...]

Both sides run one RL update (one optimizer step) on the same 32-sample GRPO batch of the peer workload (SmolLM2-135M
fp32, the chat-templated questions of bench/peer_prompts.txt x 2 samples, responses of 16..64 seeded random tokens,
seeded advantages), with the same micro-batches (policy.micro_batch_size), the same packed forward and loss
(rlaif.rl.logprobs.response_logprobs, rlaif.rl.algorithms.policy_loss) and gradient clipping:

* actor: `PolicyWorker.train` on a one-rank ActorGroup (ZeRO stage policy.zero_stage, torch AdamW), called through
  Ray from this process, started as the trainer starts it -- so with the trainer's thread budget
  (ray.cpu_threads_policy; all cores when 0).
* plain: this process, no Ray, no DeepSpeed: the same forward and loss, loss / micro-batches, backward, then
  clip_grad_norm_ + torch.optim.AdamW.step, on as many torch threads as the actor reported.

The two alternate round by round (after a warm-up round), so machine noise hits them alike. Printed: tokens/s of each
(tokens = prompt + response positions through the forward; response tokens/s in brackets), the threads torch reported
inside each, and the ratio actor / plain (target >= 0.9x). The machine is shared: read the spread between rounds.

--quick: the tiny builtin Llama, 8 samples, micro-batch 4, 1 round.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")
REPO = Path(__file__).resolve().parents[1]


def make_batch(cfg, seed: int = 0):
    """The peer workload's training batch: real chat-templated prompts, random responses, GRPO advantages."""
    import torch

    from rlaif.data.loader import chat_ids
    from rlaif.models import load_tokenizer, resolve_model_path
    from rlaif.rl.algorithms import batch_denominator, make_experience
    from rlaif.rl.batch import Batch

    tok = load_tokenizer(resolve_model_path(cfg.policy.model.path, cfg.cache_dir))
    texts = [t.strip() for t in (REPO / "bench/peer_prompts.txt").read_text().splitlines() if t.strip()]
    n, k = cfg.rollout.n_samples, cfg.rl.prompts_per_step
    rng = random.Random(seed)
    prompts = [chat_ids(tok, [{"role": "user", "content": texts[i % len(texts)]}]) for i in range(k) for _ in range(n)]
    top = cfg.rollout.max_new_tokens
    responses = [[rng.randrange(100, tok.vocab_size) for _ in range(rng.randint(top // 4, top))] for _ in prompts]
    batch = Batch.from_token_lists(prompts, responses, tok.pad_token_id, prompt=[""] * len(prompts),
                                   response=[""] * len(prompts))
    mask = batch.response_mask
    gen = torch.Generator().manual_seed(seed)
    batch["sampler_logprobs"] = -torch.rand(mask.shape, generator=gen) * 3 * mask
    batch["finished"] = torch.ones(len(batch), dtype=torch.bool)
    batch["scores"] = torch.randn(len(batch), generator=gen)
    make_experience(cfg.rl, n, 0.0, batch)
    batch.meta.update(temperature=1.0, top_p=1.0, denom=batch_denominator(cfg.rl, batch))
    return batch


class PlainLoop:
    """Forward + backward + AdamW with nothing around it: the same model, loss and micro-batches as PolicyWorker."""

    def __init__(self, cfg) -> None:
        import torch

        from rlaif.models import disable_dropout, load_causal_lm, resolve_model_path

        pc = cfg.policy
        self.cfg = cfg
        self.model = load_causal_lm(resolve_model_path(pc.model.path, cfg.cache_dir), pc.model.dtype)
        disable_dropout(self.model)
        if pc.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=pc.lr, weight_decay=pc.weight_decay)

    def train(self, batch) -> float:
        import torch

        from rlaif.rl.algorithms import policy_loss
        from rlaif.rl.logprobs import response_logprobs

        self.model.train()
        size = self.cfg.policy.micro_batch_size
        micro = -(-len(batch) // size)
        denom = batch.meta["denom"] / micro
        t0 = time.perf_counter()
        for mb in batch.chunks(size):
            logp = response_logprobs(self.model, mb, 1.0, 1.0)
            loss, _ = policy_loss(self.cfg.rl, logp, mb, 0.0, denom, self.cfg.rollout.max_new_tokens)
            (loss / micro).backward()  # as DeepSpeed scales by its gradient accumulation steps
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.policy.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (after one warm-up round)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of bench/peer.yaml")
    args = parser.parse_args()
    import ray
    import torch

    from actors.group import ActorGroup, get
    from actors.policy import PolicyWorker
    from rlaif.config import load_config

    quick = ["policy.model.path=builtin:tiny-llama", "rl.prompts_per_step=4", "rollout.max_new_tokens=16"]
    cfg = load_config(REPO / "bench/peer.yaml", [*(quick if args.quick else []), *args.overrides])
    rounds = 1 if args.quick else args.rounds
    batch = make_batch(cfg)
    tokens = int(batch["prompt_len"].sum() + batch["response_len"].sum())
    print(f"batch: {len(batch)} samples, {tokens} tokens ({batch.token_count()} response tokens), micro-batch "
          f"{cfg.policy.micro_batch_size}, model {cfg.policy.model.path} {cfg.policy.model.dtype}, ZeRO-"
          f"{cfg.policy.zero_stage}, gradient checkpointing {cfg.policy.gradient_checkpointing}", flush=True)

    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    try:
        actor = ActorGroup(PolicyWorker, 1, cfg, timeout=900, name="policy")  # as the trainer starts it
        threads = {"actor": get(actor.actors[0].__ray_call__.remote(
            lambda self: __import__("torch").get_num_threads()), 60, "threads")}
        plain = PlainLoop(cfg)
        shared = ray.put(batch)

        def run(side: str) -> float:
            if side == "actor":
                t0 = time.perf_counter()
                actor.call_sharded("train", [shared], 0.0)
                return time.perf_counter() - t0
            torch.set_num_threads(threads["actor"])
            threads[side] = torch.get_num_threads()
            return plain.train(batch)

        sides = ["actor", "plain"]
        seconds: dict[str, list[float]] = {s: [] for s in sides}
        for rnd in range(rounds + 1):
            for side in sides if rnd % 2 else sides[::-1]:
                s = run(side)
                if rnd:  # round 0 warms every side up
                    seconds[side].append(s)
                print(f"round {rnd}{' (warm-up)' if not rnd else ''}: {side:<8} {s:7.2f} s", flush=True)
    finally:
        ray.shutdown()
    tps = {s: tokens / statistics.median(v) for s, v in seconds.items()}
    print(f"\nupdate throughput (median of {rounds} rounds; tokens/s, response tokens/s in brackets):")
    for s in sides:
        print(f"  {s:<8} threads {threads[s]}  {tps[s]:7.1f} tok/s  [{tps[s] * batch.token_count() / tokens:6.1f}]"
              f"  {statistics.median(seconds[s]):6.2f} s per update  (rounds: "
              f"{', '.join(f'{x:.1f}' for x in seconds[s])})")
    print(f"actor / plain, {threads['actor']} thread(s) each (target >= 0.9x): {tps['actor'] / tps['plain']:.3f}x")


if __name__ == "__main__":
    main()
