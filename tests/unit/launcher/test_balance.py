"""balance.assign: seats for live workers over saved topologies, as demand changes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torchserve_cpu.launcher.errors import LauncherError
from torchserve_cpu.launcher.host.lscpu import read_lscpu
from torchserve_cpu.launcher.host.topology import Topology
from torchserve_cpu.launcher.planning.balance import Demand, Pool, assign
from torchserve_cpu.launcher.planning.options import LauncherOptions

DATA = Path(__file__).resolve().parents[2] / "data" / "topologies"


def load(name: str) -> Topology:
    return read_lscpu(DATA / name)


@pytest.fixture(scope="module")
def two_core() -> Topology:
    return load("this-machine-epyc-2core.lscpu")


@pytest.fixture(scope="module")
def xeon() -> Topology:
    return load("xeon-8180m-2s.lscpu")


def pool_of(machine: Topology, args: str = "", cpus: tuple[int, ...] | None = None) -> Pool:
    return Pool(cpus if cpus is not None else machine.cpu_ids, None, args)


class Host:
    """Live workers of one test, re-seated after every change like the registry does."""

    def __init__(self, machine: Topology) -> None:
        self.machine = machine
        self.demands: dict[int, Demand] = {}
        self.seq = 0

    def join(self, pid: int, pool: Pool, model: str = "m") -> None:
        self.demands[pid] = Demand((pid, 0), model, pool, self.seq)
        self.seq += 1
        self.reseat()

    def leave(self, pid: int) -> None:
        del self.demands[pid]
        self.reseat()

    def reseat(self) -> None:
        result = assign(self.machine, list(self.demands.values()))
        self.notes = result.notes
        self.seats = {key[0]: seat for key, seat in result.seats.items()}
        for pid, demand in self.demands.items():
            self.demands[pid] = Demand(demand.key, demand.model, demand.pool, demand.seq,
                                       self.seats[pid].block.cpus,
                                       demand.home or self.seats[pid].block.cpus)

    def cpus(self) -> dict[int, tuple[int, ...]]:
        return {pid: seat.block.cpus for pid, seat in self.seats.items()}

    def threads(self) -> dict[int, int]:
        return {pid: seat.threads for pid, seat in self.seats.items()}


def test_a_survivor_that_grew_during_a_restart_goes_back_home(two_core: Topology) -> None:
    host, pool = Host(two_core), pool_of(two_core)
    host.join(1, pool)
    host.join(2, pool)
    assert host.cpus() == {1: (0,), 2: (1,)}
    host.leave(1)  # kill -9 of the worker on core 0
    assert host.cpus() == {2: (0, 1)}
    host.join(3, pool)  # its replacement
    assert host.cpus() == {2: (1,), 3: (0,)}


def test_issue_example_model_b_comes_and_goes(two_core: Topology) -> None:
    """One worker of A holds both cores; B registers -> A shrinks to core 0; B leaves ->
    A grows back (issue 9's example)."""
    host, pool = Host(two_core), pool_of(two_core)
    host.join(100, pool, "A")
    assert host.cpus() == {100: (0, 1)} and host.threads() == {100: 2}
    host.join(200, pool, "B")
    assert host.cpus() == {100: (0,), 200: (1,)} and host.threads() == {100: 1, 200: 1}
    host.leave(200)
    assert host.cpus() == {100: (0, 1)} and host.threads() == {100: 2}


def test_a_crashed_worker_is_replaced_and_the_layout_restored(xeon: Topology) -> None:
    host, pool = Host(xeon), pool_of(xeon)
    for pid in (1, 2, 3, 4):
        host.join(pid, pool)
    before = host.cpus()
    assert sorted(before.values()) == [
        tuple(range(0, 14)), tuple(range(14, 28)), tuple(range(28, 42)), tuple(range(42, 56))
    ]
    host.leave(3)  # killed: the 3 survivors re-divide the cores meanwhile
    host.join(5, pool)  # TorchServe's replacement
    after = host.cpus()
    assert sorted(after.values()) == sorted(before.values())
    assert {pid: after[pid] for pid in (1, 2)} == {pid: before[pid] for pid in (1, 2)}
    # 4 had to leave node 1 while only 3 blocks existed (2 on node 0, 1 on node 1) and
    # stays where it now is; the replacement takes the block that is free
    assert after[5] == tuple(range(42, 56))


def test_joining_keeps_existing_workers_inside_what_they_held(xeon: Topology) -> None:
    host, pool = Host(xeon), pool_of(xeon)
    host.join(1, pool)
    host.join(2, pool)
    first = host.cpus()
    assert [host.seats[p].block.node for p in (1, 2)] == [0, 1]  # one node each
    host.join(3, pool)
    for pid in (1, 2):
        assert set(host.cpus()[pid]) <= set(first[pid])  # shrank in place, did not move


def test_more_workers_than_cores_share_with_divided_threads(two_core: Topology) -> None:
    host, pool = Host(two_core), pool_of(two_core)
    for pid in (1, 2, 3):
        host.join(pid, pool)
    assert host.threads() == {1: 1, 2: 1, 3: 1}  # never N x cores threads
    shared = {pid for pid, seat in host.seats.items() if seat.shared_with}
    assert shared == {1, 3} and host.cpus()[1] == host.cpus()[3] == (0,)
    assert host.cpus()[2] == (1,)
    assert any("room for 2" in note for note in host.notes)


def test_ninstances_reserves_a_fixed_layout(xeon: Topology) -> None:
    host, pool = Host(xeon), pool_of(xeon, "--ninstances 4")
    host.join(1, pool)
    assert host.cpus() == {1: tuple(range(0, 14))}  # a reserved slot, not the whole node
    host.join(2, pool)
    host.join(3, pool)
    assert host.cpus()[1] == tuple(range(0, 14))  # nobody moves when slots are free
    assert sorted(host.cpus().values())[2] == tuple(range(28, 42))


def test_ncores_per_instance_keeps_its_size(xeon: Topology) -> None:
    host, pool = Host(xeon), pool_of(xeon, "--ncores_per_instance 4")
    for pid in range(1, 4):
        host.join(pid, pool)
    assert all(len(cpus) == 4 for cpus in host.cpus().values())


def test_two_instances_with_the_same_config_share_the_cores_fairly(xeon: Topology) -> None:
    host = Host(xeon)
    same_a, same_b = pool_of(xeon), pool_of(xeon)
    host.join(1, same_a)
    host.join(2, same_b)  # a second TorchServe on the same host, same args
    a, b = host.cpus()[1], host.cpus()[2]
    assert not set(a) & set(b) and len(a) == len(b) == 28


def test_instances_on_different_nodes_never_meet(xeon: Topology) -> None:
    host = Host(xeon)
    host.join(1, pool_of(xeon, "--node_id 0"))
    host.join(2, pool_of(xeon, "--node_id 1"))
    host.join(3, pool_of(xeon, "--node_id 1"))
    assert host.cpus()[1] == tuple(range(0, 28))
    assert sorted([host.cpus()[2], host.cpus()[3]]) == [tuple(range(28, 42)), tuple(range(42, 56))]


def test_a_later_instance_with_other_args_plans_over_what_is_left(xeon: Topology) -> None:
    host = Host(xeon)
    host.join(1, pool_of(xeon, "--ninstances 4"))
    host.join(2, pool_of(xeon, "--ncores_per_instance 2"))
    first, second = set(host.cpus()[1]), set(host.cpus()[2])
    assert not first & second and len(second) == 2


def test_a_pool_that_cannot_be_planned_raises_naming_the_flag(xeon: Topology) -> None:
    with pytest.raises(LauncherError, match="--node_id 7"):
        assign(xeon, [Demand((1, 0), "m", pool_of(xeon, "--node_id 7"), 0)])


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[str, int]]:
    """Joins and leaves of up to 12 workers."""
    steps, live, next_pid = [], [], 1
    for _ in range(draw(st.integers(1, 30))):
        if live and draw(st.booleans()):
            pid = draw(st.sampled_from(live))
            live.remove(pid)
            steps.append(("leave", pid))
        elif len(live) < 12:
            steps.append(("join", next_pid))
            live.append(next_pid)
            next_pid += 1
    return steps


@settings(max_examples=60, deadline=None)
@given(history=histories(), name=st.sampled_from(
    ["xeon-8180m-2s.lscpu", "epyc-2s-nps4.lscpu", "gapped-node-ids.lscpu",
     "cloud-vm-adjacent-smt.lscpu", "graviton3-arm.lscpu"]))
def test_after_any_history_live_workers_are_disjoint_and_node_local(
    history: list[tuple[str, int]], name: str
) -> None:
    machine = load(name)
    cores = len(machine.cores())
    host, pool = Host(machine), pool_of(machine)
    for action, pid in history:
        host.join(pid, pool) if action == "join" else host.leave(pid)
        cpus = host.cpus()
        if len(cpus) <= cores:
            seen: set[int] = set()
            for pid_cpus in cpus.values():
                assert not seen & set(pid_cpus)  # disjoint
                seen |= set(pid_cpus)
        largest_node = max(
            sum(1 for cpus in machine.cores().values() if cpus[0].node == node)
            for node in {cpu.node for cpu in machine.cpus}
        )
        for seat in host.seats.values():
            core_keys = {machine.by_id()[c].core for c in seat.block.cpus}
            assert seat.threads <= len(core_keys)  # one thread per physical core at most
            if len(core_keys) <= largest_node:  # inside one NUMA node where it fits in one
                assert seat.block.node is not None


def test_a_later_instance_never_gets_the_siblings_of_cores_in_use(xeon: Topology) -> None:
    """The first instance's worker runs on all 56 physical cores (CPUs 0-55); CPUs 56-111 are
    their SMT siblings, so the second instance has no free core and says it shares."""
    first, second = pool_of(xeon), pool_of(xeon, "--ncores_per_instance 2")
    result = assign(xeon, [Demand((1, 0), "a", first, 0), Demand((2, 0), "b", second, 1)])
    assert result.seats[(2, 0)].block.cpus == (0, 1)  # not (56, 57): core 0 and 1 again
    assert result.seats[(2, 0)].shared_with == ((1, 0),)
    assert result.seats[(1, 0)].shared_with == ((2, 0),)
    assert result.notes == (
        "pool 0-111 (--ncores_per_instance 2) is fully used by an earlier TorchServe "
        "instance: its workers share those cores",
    )
    whole = pool_of(xeon, "--ninstances 1")  # one block of every core, first
    later = assign(xeon, [Demand((1, 0), "a", whole, 0), Demand((2, 0), "b", second, 1),
                          Demand((3, 0), "c", pool_of(xeon), 2)])
    assert later.notes[-1].startswith("pool 0-111 (no args) is fully used")


def test_every_earlier_instance_counts_not_only_the_last(xeon: Topology) -> None:
    demands = [Demand((n, 0), "m", pool_of(xeon, f"--ncores_per_instance {n + 1}"), n)
               for n in (1, 2, 3)]
    seats = assign(xeon, demands).seats
    # the second goes to the emptier node 1; the third must avoid the first, not only it
    assert [seats[(n, 0)].block.cpus for n in (1, 2, 3)] == [(0, 1), (28, 29, 30), (2, 3, 4, 5)]


def test_an_instance_under_a_cpu_quota_gets_what_the_quota_pays_for(xeon: Topology) -> None:
    limited = Pool(xeon.cpu_ids, 2.0, "")
    assert assign(xeon, [Demand((1, 0), "m", limited, 0)]).seats[(1, 0)].block.cpus == (0, 1)


def test_throughput_mode_is_a_reserved_layout(xeon: Topology) -> None:
    pool = pool_of(xeon, "--throughput_mode")
    result = assign(xeon, [Demand((n, 0), "m", pool, n) for n in range(3)])
    assert [result.seats[(n, 0)].block.cpus for n in range(3)] == [
        tuple(range(0, 28)), tuple(range(28, 56)), tuple(range(0, 28))]
    assert result.seats[(2, 0)].threads == 14
    assert result.notes == ()  # a fixed layout of two blocks: nothing was cut down


def test_more_workers_than_blocks_use_the_most_blocks_that_fit(xeon: Topology) -> None:
    pool = Pool(tuple(range(6)), None, "--ncores_per_instance 2")
    result = assign(xeon, [Demand((n, 0), "m", pool, n) for n in range(5)])
    blocks = {result.seats[(n, 0)].block.cpus for n in range(5)}
    assert blocks == {(0, 1), (2, 3), (4, 5)}  # 3 fit: not 2 (every count is tried)
    assert result.notes == (
        "5 workers, room for 3 disjoint blocks: --ncores_per_instance 2 x 5 workers needs 10 "
        "physical cores; only 6 usable (allowed: 0-5)",
    )
    one = assign(xeon, [Demand((n, 0), "m", Pool((0, 1), None, "--ncores_per_instance 2"), n)
                        for n in range(2)])
    assert {seat.block.cpus for seat in one.seats.values()} == {(0, 1)}  # down to one block


def test_extra_workers_share_the_least_loaded_block_they_already_hold(two_core: Topology) -> None:
    pool = pool_of(two_core)
    demands = [Demand((1, 0), "m", pool, 0, holding=(0,)), Demand((2, 0), "m", pool, 1, (1,)),
               Demand((3, 0), "m", pool, 2, holding=(1,)), Demand((4, 0), "m", pool, 3)]
    seats = assign(two_core, demands).seats
    assert {n: seats[(n, 0)].block.cpus for n in (1, 2, 3, 4)} == {
        1: (0,), 2: (1,), 3: (1,), 4: (0,)}  # 3 stays on its core; 4 evens the load


def test_a_shared_block_divides_its_threads_in_whole_numbers(xeon: Topology) -> None:
    pool = pool_of(xeon, "--ninstances 1 --skip_cross_node_cores")
    seats = assign(xeon, [Demand((n, 0), "m", pool, n) for n in range(3)]).seats
    assert {seat.threads for seat in seats.values()} == {28 // 3}


def test_with_nothing_of_its_own_left_a_worker_stays_on_its_node(xeon: Topology) -> None:
    """Its CPUs (SMT siblings on node 1) are in no block now: its memory is on node 1."""
    pool = pool_of(xeon)
    moved = Demand((1, 0), "m", pool, 0, holding=(84, 85))
    other = Demand((2, 0), "m", pool, 1)
    seats = assign(xeon, [moved, other]).seats
    assert seats[(1, 0)].block.node == 1 and seats[(2, 0)].block.node == 0


def test_a_layout_of_no_blocks_is_an_error_not_an_empty_seat(xeon: Topology) -> None:
    """Not reachable from a config (the parser refuses --ninstances 0): options set by hand."""
    pool = pool_of(xeon)
    object.__setattr__(pool, "options", LauncherOptions(ninstances=0))
    with pytest.raises(LauncherError, match="^no core block can be planned for these workers$"):
        assign(xeon, [Demand((1, 0), "m", pool, 0)])


def test_a_models_workers_take_different_cores_before_sharing_one(two_core: Topology) -> None:
    """Issue 18: 2 -> 1 -> 2 on a 2-core machine beside a worker of another model: the
    re-scaled worker shares the other model's core, not its sibling's."""
    pool = pool_of(two_core)
    first_a = Demand((1, 0), "a", pool, 0, holding=(0,), home=(0,))
    b = Demand((2, 0), "b", pool, 1, holding=(1,), home=(1,))
    second_a = Demand((3, 0), "a", pool, 2)  # the scale back up
    seats = assign(two_core, [first_a, b, second_a]).seats
    assert seats[(1, 0)].block.cpus != seats[(3, 0)].block.cpus
    assert seats[(1, 0)].block.cpus == (0,) and seats[(3, 0)].block.cpus == (1,)
    assert seats[(2, 0)].shared_with == ((3, 0),) and seats[(1, 0)].shared_with == ()
    # whatever the order of arrival, the two workers of `a` never share while `b` sits alone
    for order in ([b, first_a, second_a], [first_a, second_a, b]):
        placed = assign(two_core, [replace(d, seq=i) for i, d in enumerate(order)]).seats
        assert placed[(1, 0)].block.cpus != placed[(3, 0)].block.cpus
