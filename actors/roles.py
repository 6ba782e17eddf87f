"""The roles of a run behind one set of handles: which actors a stage starts, restarts after a crash, shutdown.

The trainer calls roles and never handles Ray's failure modes itself:
* the rollout engines, the labeler, the reference and the preference-model scorer are started with
  `ray.max_restarts`; a call whose actor process died is retried once Ray has restarted it (an engine first gets
  the current weights again), so a step loses no sample and counts none twice; `faults` counts the restarts;
* a DeepSpeed rank (policy, critic) that dies cannot rejoin its process group: the run fails with a RoleDied error
  the trainer turns into "resume from the last checkpoint".
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors import RoleDied, StartupFailed, actor_death, task_failure
from actors.critic import CriticWorker
from actors.group import ActorGroup, get, kill_and_wait
from actors.labeler import LabelerWorker
from actors.policy import PolicyWorker
from actors.preference import PreferenceModelWorker, PreferenceScorer
from actors.reference import ReferenceWorker
from actors.rollout import RolloutEngines, rollout_placement
from actors.weight_sync import SyncFailed, WeightSync
from rlaif.config import Config, ConfigError
from rlaif.config.placement import colocated_bundles, colocated_roles, role_plan  # role_plan: imported from here too
from rlaif.rl.algorithms import needs_reference
from rlaif.rl.batch import Batch

log = logging.getLogger("rlaif")


class ResourceError(ConfigError):
    """The Ray cluster (or the local Ray the config describes) cannot place the actors a stage needs."""


def check_resources(plan: dict[str, tuple[int, float]], cpus: float, gpus: float, node_gpus: float, where: str) -> None:
    """Fail now, saying what was asked and what there is, instead of waiting on actors Ray can never place."""
    need_cpu = sum(n for n, _ in plan.values())
    need_gpu = sum(n * g for n, g in plan.values())
    too_big = [f"{role} ({g:g} GPUs each)" for role, (_, g) in plan.items() if g > node_gpus]
    if need_cpu <= cpus and need_gpu <= gpus + 1e-9 and not too_big:
        return
    asked = ", ".join(f"{role} {n} x (1 CPU{f', {g:g} GPU' if g else ''})" for role, (n, g) in plan.items())
    per_node = f"; no node has enough GPUs for {', '.join(too_big)}" if too_big else ""
    raise ResourceError(f"{where}: the run needs {need_cpu} CPUs and {need_gpu:g} GPUs ({asked}) but has {cpus:g} "
                        f"CPUs and {gpus:g} GPUs{per_node}")


def wait_restarted(actor, what: str, timeout: float) -> None:
    """Block until Ray has restarted a crashed actor (its constructor ran again); RoleDied if it will not come back."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=max(deadline - time.monotonic(), 1.0))
            return
        except ray.exceptions.ActorUnavailableError:  # still restarting
            if time.monotonic() > deadline:
                raise RoleDied(f"{what} did not come back within {timeout:.0f}s (trainer.timeout_s)") from None
            time.sleep(0.5)
        except ray.exceptions.GetTimeoutError:  # restarted, but not placed: its node is gone, no other can host it
            raise RoleDied(f"{what} was restarted but could not be placed within {timeout:.0f}s (trainer.timeout_s): "
                           "its node may be gone and no other node has room for it") from None
        except ray.exceptions.RayActorError as exc:
            raise RoleDied(f"{what} died and Ray did not restart it (ray.max_restarts exhausted?): "
                           f"{actor_death(exc)}") from exc


class Restartable:
    """A single-process role that Ray restarts when its process dies. `role.method.remote(...)` returns a Call that
    Roles.get resolves, retrying on the restarted actor; everything else matches a Ray actor handle."""

    def __init__(self, roles: Roles, name: str, cls: type, *args: Any, num_gpus: float = 0.0, placement=None) -> None:
        self.roles, self.name = roles, name
        self.actor = ray.remote(cls).options(num_cpus=1, num_gpus=num_gpus, max_restarts=roles.max_restarts,
                                             max_task_retries=0, scheduling_strategy=placement).remote(*args)

    def __getattr__(self, method: str) -> _Method:
        return _Method(self, method)


class _Method:
    def __init__(self, role: Restartable, method: str) -> None:
        self.role, self.method = role, method

    def remote(self, *args: Any, **kwargs: Any) -> Call:
        return Call(self.role, self.method, args, kwargs)


class Call:
    """A call in flight on a Restartable; result() retries it once the actor is back (the same arguments: a
    retried step sees the same samples, seeds and principles' RNG state as far as the actor can replay them)."""

    def __init__(self, role: Restartable, method: str, args: tuple, kwargs: dict) -> None:
        self.role, self.method, self.args, self.kwargs = role, method, args, kwargs
        self.ref = getattr(role.actor, method).remote(*args, **kwargs)

    def result(self, timeout: float, what: str) -> Any:
        tries = 0
        while True:
            try:
                return get(self.ref, timeout, what)
            except ray.exceptions.RayActorError as exc:  # ActorUnavailableError too: a node that flaps
                tries += 1
                if tries > self.role.roles.max_restarts + 1:  # each retry counts, so a flapping node cannot loop
                    raise RoleDied(f"{self.role.name} failed {tries} times ({actor_death(exc)})") from exc
                self.role.roles.restarted(self.role.name, exc)
                wait_restarted(self.role.actor, self.role.name, timeout)
                self.ref = getattr(self.role.actor, self.method).remote(*self.args, **self.kwargs)


class Sharded:
    """A call in flight on every rank of a group, each on its shard; result() is the shards' results concatenated."""

    def __init__(self, group: ActorGroup, method: str, batch: Batch) -> None:
        self.group, self.method, self.refs = group, method, sharded(group, method, batch)

    def result(self, timeout: float, what: str) -> torch.Tensor:
        return torch.cat(self.group._get(self.refs, self.method))


class PreferenceScorers:
    """The trained preference model serving RL, data parallel: `actors` like an ActorGroup's, each restartable."""

    def __init__(self, roles: Roles, cfg: Config, path: str, mean: float, std: float) -> None:
        gpus = cfg.ray.gpus_per_aux
        self.actors = [Restartable(roles, f"preference_model.{i}", PreferenceScorer, cfg, path, mean, std,
                                   num_gpus=gpus) for i in range(cfg.preference_model.num_ranks)]
        roles.get([a.__ray_ready__.remote() for a in self.actors], "starting the preference-model scorers")

    def shutdown(self) -> None:
        kill_and_wait([a.actor for a in self.actors])


class Roles:
    """One handle per role. Every call is bounded by trainer.timeout_s. A stage starts only the roles it needs;
    the preference model is started for training (start_pm_trainer) and then for scoring (start_pm_scorers)."""

    def __init__(self, cfg: Config, stage: str = "rl") -> None:
        self.cfg, self.timeout, self.max_restarts = cfg, cfg.trainer.timeout_s, cfg.ray.max_restarts
        self.faults: Counter[str] = Counter()
        self.weight_version = 0
        plan = role_plan(cfg, stage)
        self.rollout = self.labeler = self.reference = self.pm = self.policy = self.critic = None
        self.sync_weights, self.pgs = None, []
        r, engines = cfg.ray, plan["rollout"][0]

        def bundle(pg, i: int) -> PlacementGroupSchedulingStrategy:
            return PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)

        try:
            if r.colocate and "policy" in plan:
                # One bundle per policy rank holding what is colocated with it (on GPU: one GPU, shared by fractions).
                shared = placement_group(colocated_bundles(plan, cfg.device), strategy=r.placement_policy)
                self.pgs.append(shared)
                self.get(shared.ready(), f"the colocated placement group ({colocated_roles(plan)})")
                engine_at, aux_at = [bundle(shared, i) for i in range(engines)], bundle(shared, 0)
                group_at = {"pg": shared}
            else:
                # tensor_parallel_size single-GPU bundles per engine, or one bundle per engine at TP 1
                own, engine_at = rollout_placement(cfg)
                self.pgs.append(own)
                self.get(own.ready(), f"placement group for {engines} rollout engines ({r.placement_rollout})")
                aux_at, group_at = None, {}

            def group(cls, role: str) -> ActorGroup | None:
                if role not in plan:
                    return None
                n = plan[role][0]
                where = {**group_at, "bundles": list(range(n))} if group_at else {"strategy": r.placement_policy}
                return ActorGroup(cls, n, cfg, num_gpus=plan[role][1], timeout=self.timeout, name=role, **where)

            def ready(actors: list, what: str) -> None:
                """Surface constructor failures (bad model, vLLM start-up) now rather than at the first step."""
                self.get([a.__ray_ready__.remote() for a in actors if a is not None], what)

            # vLLM sizes its KV cache from the GPU memory free when it starts: engines that share their GPU with the
            # policy ranks (colocated on cuda) start once the ranks hold their model, and one vLLM at a time.
            ranks_first = r.colocate and cfg.device == "cuda" and "policy" in plan
            if ranks_first:
                self.policy, self.critic = group(PolicyWorker, "policy"), group(CriticWorker, "critic")
            self.rollout = RolloutEngines(cfg, plan["rollout"][1], self.timeout, stage, self.max_restarts, engine_at)
            self.rollout.on_restart = self._engine_restarted
            if ranks_first:
                ready(self.rollout.actors, "starting the rollout engines")
            aux, starting = (("labeler", LabelerWorker), ("reference", ReferenceWorker)), []
            for role, cls in reversed(aux) if ranks_first else aux:  # the labeler's own vLLM last
                if role in plan:
                    actor = Restartable(self, role, cls, cfg, num_gpus=plan[role][1], placement=aux_at)
                    setattr(self, role, actor)
                    # A model-judge labeler loads its model now, beside the other roles' start-up, not at its first
                    # call after them (the debug run's start: 10 s less); a failed load ends the start-up here.
                    model_judge = role == "labeler" and not cfg.labeler.function
                    starting.append(actor.load.remote() if model_judge else actor.__ray_ready__.remote())
                    if ranks_first:
                        self.get(starting.pop(), f"starting the {role}")
            if not ranks_first:
                self.policy = group(PolicyWorker, "policy")
                self.critic = group(CriticWorker, "critic")
            self.get([*(a.__ray_ready__.remote() for a in self.rollout.actors), *starting],
                     "starting the rollout, labeler and reference actors")
            if stage == "rl":
                self.sync_weights = WeightSync(cfg, self.policy, self.rollout.actors)
        except ray.exceptions.RayTaskError as exc:  # a role's model failed to load: a corrupt file, a bad path
            self.shutdown()
            if isinstance(exc, ConfigError):  # a config key's fault, found in the actor: the CLI names it (exit 2)
                raise
            logging.getLogger(__name__).info("start-up failed:\n%s", exc)  # the remote traceback, to driver.log
            raise StartupFailed(f"starting the roles failed: {task_failure(exc)} (traceback in "
                                f"{cfg.output_dir}/logs/driver.log)") from None
        except BaseException:
            self.shutdown()  # what did start must not outlive a failed start-up
            raise

    # -- calls --
    def get(self, refs: Any, what: str) -> Any:
        """ray.get bounded by trainer.timeout_s; Calls on restartable roles are retried after a restart; a dead
        DeepSpeed rank raises RoleDied."""
        if isinstance(refs, (Call, Sharded)):
            return refs.result(self.timeout, what)
        if isinstance(refs, list) and any(isinstance(r, Call) for r in refs):
            return [self.get(r, what) for r in refs]
        try:
            return get(refs, self.timeout, what)
        except ray.exceptions.RayActorError as exc:
            # a DeepSpeed rank (its process group cannot be repaired), or an actor that failed in its constructor.
            # The surviving ranks fail moments later in the broken collective: take their errors now, or Ray prints
            # each as an "unhandled error" after the one-line message, at exit.
            refs = refs if isinstance(refs, list) else [refs]
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=10.0)
            for ref in done:
                try:
                    ray.get(ref)
                except Exception:  # noqa: S110  (each is the same death, already being reported)
                    pass
            raise RoleDied(f"{what}: an actor died ({actor_death(exc)})") from exc

    def reference_logprobs(self, shared: Any, batch: Batch) -> Call | Sharded | None:
        """The reference's log-probs of `batch` (`shared`: its object ref), in flight, or None when nothing reads
        them: the reference actor's, or with LoRA (policy.lora) the policy ranks' own with their adapters off."""
        if self.reference is not None:
            return self.reference.logprobs.remote(shared)
        if self.policy is not None and self.cfg.policy.lora.rank and needs_reference(self.cfg.rl):
            return Sharded(self.policy, "ref_logprobs", batch)
        return None

    def restarted(self, role: str, exc: Exception) -> None:
        self.faults[role.split(".")[0]] += 1
        log.warning("%s: its process died (%s); retrying once Ray has restarted it", role,
                    str(exc).splitlines()[0][:200])

    def _engine_restarted(self, index: int, exc: Exception) -> None:
        """A rollout engine died: wait for its restart, reconnect the weight-sync group, give it the current weights."""
        self.restarted(f"rollout.{index}", exc)
        wait_restarted(self.rollout.actors[index], f"rollout engine {index}", self.timeout)
        if self.sync_weights is not None:
            self.sync_weights = WeightSync(self.cfg, self.policy, self.rollout.actors)  # a group with the new process
            self.sync(self.weight_version)

    def sync(self, version: int) -> dict[str, float]:
        """The policy's weights into every engine. An engine that dies meanwhile is restarted; the others, blocked
        in the broken broadcast, are restarted too; then the group is rebuilt and the sync repeated. A sync that fails
        with no death reported yet (a lost node is noticed only when Ray's health checks give up on it, after the
        surviving side has seen the broken connection) restarts every engine the same way. Bounded by
        ray.max_restarts, so a sync that can never succeed ends the run instead of looping."""
        t0 = time.perf_counter()
        self.rollout.sleeper.wake_weights()  # sleeping engines (rollout.sleep_level) take weights awake
        tries = 0
        while True:
            try:
                metrics = self.sync_weights(version)
                break
            except SyncFailed as exc:
                if exc.policy_ranks:
                    raise RoleDied(f"policy rank(s) {exc.policy_ranks} died during the weight sync") from exc
                tries += 1
                if tries > self.max_restarts + 1:
                    raise RoleDied(f"the weight sync failed {tries} times (last: {exc})") from exc
                if not exc.engines:
                    self.faults["weight_sync"] += 1
                    log.warning("weight sync failed with no process reported dead yet (%s); restarting every rollout "
                                "engine and syncing again", str(exc.__cause__ or exc).splitlines()[0][:200])
                for k in exc.engines:
                    self.restarted(f"rollout.{k}", exc)
                for k, e in enumerate(self.rollout.actors):
                    if k not in exc.engines:
                        ray.kill(e, no_restart=False)  # stuck in the broken broadcast, or on a node being lost
                    self.rollout.epochs[k] += 1  # work in flight on it is resubmitted, not recovered again
                for k, e in enumerate(self.rollout.actors):
                    wait_restarted(e, f"rollout engine {k}", self.timeout)
                self.sync_weights = WeightSync(self.cfg, self.policy, self.rollout.actors)
        self.weight_version = version
        return metrics | {"time/weight_sync": time.perf_counter() - t0}

    # -- the preference model's two lives --
    def start_pm_trainer(self) -> ActorGroup:
        cfg = self.cfg
        self.pm = ActorGroup(PreferenceModelWorker, cfg.preference_model.num_ranks, cfg, num_gpus=cfg.ray.gpus_per_aux,
                             timeout=self.timeout, name="preference_model")
        return self.pm

    def start_pm_scorers(self, path: str, mean: float, std: float) -> None:
        if self.pm is not None:
            self.pm.shutdown()
        self.pm = PreferenceScorers(self, self.cfg, path, mean, std)

    def fault_metrics(self) -> dict[str, float]:
        return {"faults/restarts": float(sum(self.faults.values())),
                **{f"faults/{role}": float(n) for role, n in self.faults.items()}}

    def placement(self) -> dict[str, list[str]]:
        """The node each actor of each role runs on (written to output_dir/logs/placement.json)."""
        def node(a) -> Any:
            return (a.actor if isinstance(a, Restartable) else a).__ray_call__.remote(
                lambda self: ray.get_runtime_context().get_node_id())

        roles = {"rollout": self.rollout.actors if self.rollout else [], "labeler": [self.labeler],
                 "reference": [self.reference], "policy": self.policy.actors if self.policy else [],
                 "critic": self.critic.actors if self.critic else []}
        return {k: self.get([node(a) for a in v if a is not None], "placement") for k, v in roles.items()
                if any(a is not None for a in v)}

    def shutdown(self) -> None:
        singles = [*(self.rollout.actors if self.rollout else []), self.labeler, self.reference]
        kill_and_wait([a.actor if isinstance(a, Restartable) else a for a in singles if a is not None])
        for grp in (self.pm, self.policy, self.critic):
            if grp is not None:
                grp.shutdown()
        for pg in self.pgs:
            remove_placement_group(pg)


def sharded(group: ActorGroup, method: str, batch: Batch, *args) -> list:
    """Start `method` on every rank with its contiguous shard of the batch; returns the object refs."""
    return [getattr(a, method).remote(s, *args) for a, s in zip(group.actors, batch.split(len(group.actors)))]
