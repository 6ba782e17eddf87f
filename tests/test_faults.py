"""Faults that must end in a one-line RoleDied (the trainer turns it into "resume from the last checkpoint"), not in
a raw Ray error or an endless retry: a DeepSpeed-group rank dying under ActorGroup.call, and a restartable role
whose process keeps dying (a flapping node) retried only ray.max_restarts + 1 times. A real local Ray, real actors
that kill their own process."""

import os
from collections import Counter

import pytest
import ray

from actors import RoleDied
from actors.group import ActorGroup
from actors.roles import Restartable

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="ERROR")
    yield
    ray.shutdown()


class Dies:
    def __init__(self, *args) -> None:
        pass

    def setup_distributed(self, *args) -> None:  # ActorGroup's start-up call
        pass

    def work(self) -> int:
        os._exit(1)


class Roles:
    """What Restartable needs of rlaif's Roles: the restart budget and the fault counter."""

    def __init__(self, max_restarts: int) -> None:
        self.max_restarts, self.faults = max_restarts, Counter()

    def restarted(self, role: str, exc: Exception) -> None:
        self.faults[role] += 1


def test_a_rank_that_dies_under_a_group_call_is_one_role_died_line(local_ray):
    group = ActorGroup(Dies, 1, timeout=60, name="policy")
    try:
        with pytest.raises(RoleDied, match=r"^policy\.work: a rank died \(.*class_name: Dies"):
            group.call("work")  # was a raw RayActorError, many lines long
    finally:
        group.shutdown()


def test_a_role_that_keeps_dying_is_retried_a_bounded_number_of_times(local_ray):
    """Retries count against ray.max_restarts themselves: failures Ray does not count as restarts (an actor that is
    unavailable while its node flaps) would otherwise be retried for ever. Here Ray may restart the actor 5 times
    while the budget is 1; bug caught: the call retried until Ray's own 5 restarts ran out."""
    roles = Roles(max_restarts=5)
    role = Restartable(roles, "labeler", Dies)  # Ray: max_restarts=5
    roles.max_restarts = 1
    with pytest.raises(RoleDied, match=r"^labeler failed 3 times \("):
        role.work.remote().result(60, "labeler.work")
    assert roles.faults["labeler"] == 2
