"""Exact plans where NUMA nodes differ in size, and where blocks have to span nodes.

Uneven nodes are what a container sees when its cpuset takes part of a node (the saved
Xeon restricted to CPUs 0-19 and 28-33), or what a tiny machine built here has: node ids
with gaps, SMT siblings numbered adjacently (cloud VMs).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from torchserve_cpu.launcher.errors import LauncherError
from torchserve_cpu.launcher.host.lscpu import read_lscpu
from torchserve_cpu.launcher.host.topology import Cpu, Topology
from torchserve_cpu.launcher.planning.options import parse_launcher_args
from torchserve_cpu.launcher.planning.planner import Plan, plan

DATA = Path(__file__).resolve().parents[2] / "data" / "topologies"
SPANS = "some blocks span nodes"


def tiny(cores_per_node: dict[int | None, int], smt: int = 2) -> Topology:
    """Cores numbered node after node; the siblings of core c are CPUs c*smt .. c*smt+smt-1."""
    cpus, core = [], 0
    for node, count in cores_per_node.items():
        for _ in range(count):
            cpus += [Cpu(core * smt + t, (core,), 0, node) for t in range(smt)]
            core += 1
    nodes = tuple(sorted(n for n in cores_per_node if n is not None))
    return Topology(tuple(cpus), nodes=nodes, source="tiny")


def run(topology: Topology, workers: int, args: str = "") -> Plan:
    result = plan(topology, parse_launcher_args(args), workers)
    cores = {cpu.id: cpu.core for cpu in topology.cpus}
    seen: set[tuple[int, ...]] = set()
    for block in result.blocks:  # every plan here: no physical core in two blocks
        block_cores = {cores[cpu] for cpu in block.cpus}
        assert not seen & block_cores, f"blocks overlap on a core: {result.blocks}"
        seen |= block_cores
    return result


def cpus(result: Plan) -> list[tuple[int, ...]]:
    return [block.cpus for block in result.blocks]


def nodes(result: Plan) -> list[int | None]:
    return [block.node for block in result.blocks]


@pytest.fixture(scope="module")
def container() -> Topology:
    """A cpuset over 20 cores of node 0 and 6 of node 1 of the saved two-socket Xeon."""
    return read_lscpu(DATA / "xeon-8180m-2s.lscpu").restrict([*range(0, 20), *range(28, 34)])


def test_blocks_shrink_to_stay_on_one_node_rather_than_span(container: Topology) -> None:
    # 26 cores / 2 = 13, but only node 0 holds 13: two blocks of 10 fit there, none spans
    result = run(container, 2)
    assert cpus(result) == [tuple(range(0, 10)), tuple(range(10, 20))]
    assert nodes(result) == [0, 0]
    assert result.leftover == tuple(range(28, 34))
    assert result.notes == (
        "blocks have 10 cores, not 13, so that none spans a NUMA node",
        "6 CPUs left over: 28-33",
    )


def test_the_small_node_gets_a_block_once_blocks_fit_it(container: Topology) -> None:
    result = run(container, 4)
    assert cpus(result) == [tuple(range(0, 6)), tuple(range(6, 12)), tuple(range(12, 18)),
                            tuple(range(28, 34))]
    assert nodes(result) == [0, 0, 0, 1] and result.leftover == (18, 19)


def test_an_explicit_size_that_fits_nowhere_three_times_spans_without_overlap(
    container: Topology,
) -> None:
    result = run(container, 3, "--ncores_per_instance 8")
    spanning = (16, 17, 18, 19, 28, 29, 30, 31)
    assert cpus(result) == [tuple(range(0, 8)), tuple(range(8, 16)), spanning]
    assert nodes(result) == [0, 0, None]  # only the one that must span does
    assert result.leftover == (32, 33) and any(SPANS in note for note in result.notes)


def test_one_worker_bigger_than_any_node_spans_them_all() -> None:
    machine = tiny({1: 3, 4: 5})
    result = run(machine, 1)
    assert cpus(result) == [tuple(range(0, 16, 2))] and nodes(result) == [None]
    logical = run(machine, 1, "--use_logical_core")
    assert cpus(logical) == [tuple(range(16))] and logical.blocks[0].threads == 16


def test_skip_cross_node_cores_takes_the_bigger_node() -> None:
    result = run(tiny({1: 3, 4: 5}), 1, "--skip_cross_node_cores")
    assert cpus(result) == [(6, 8, 10, 12, 14)] and nodes(result) == [4]
    assert result.leftover == (0, 2, 4)


def test_uneven_nodes_two_workers_one_each() -> None:
    result = run(tiny({1: 3, 4: 5}), 2)
    assert cpus(result) == [(0, 2, 4), (6, 8, 10)] and nodes(result) == [1, 4]
    assert result.notes[0] == "blocks have 3 cores, not 4, so that none spans a NUMA node"


def test_blocks_go_where_most_blocks_still_fit_ties_to_the_lower_node() -> None:
    machine = tiny({0: 4, 1: 5}, smt=1)  # room for two blocks of 2 on each node
    assert nodes(run(machine, 1, "--ncores_per_instance 2")) == [0]
    assert cpus(run(machine, 3, "--ncores_per_instance 2")) == [(0, 1), (2, 3), (4, 5)]
    # 9 cores // 4 workers = 2 cores each: two blocks on each node
    assert nodes(run(machine, 4)) == [0, 0, 1, 1]


def test_an_explicit_size_spans_when_it_must_and_refuses_with_skip() -> None:
    machine = tiny({1: 3, 4: 5})
    result = run(machine, 2, "--ncores_per_instance 4")
    assert cpus(result) == [(0, 2, 4, 6), (8, 10, 12, 14)] and nodes(result) == [None, 4]
    logical = run(machine, 2, "--ncores_per_instance 4 --use_logical_core")
    assert cpus(logical) == [tuple(range(0, 8)), tuple(range(8, 16))]
    with pytest.raises(LauncherError, match="only 1 blocks fit inside single nodes"):
        run(machine, 2, "--ncores_per_instance 4 --skip_cross_node_cores")


def test_blocks_follow_node_order_not_cpu_order() -> None:
    """Node 1 holds the low CPU ids: block 0 still goes to node 0."""
    machine = Topology(
        tuple(Cpu(cpu, (cpu,), 0, 1 if cpu < 2 else 0) for cpu in range(4)), nodes=(0, 1)
    )
    result = run(machine, 2)
    assert cpus(result) == [(2, 3), (0, 1)] and nodes(result) == [0, 1]


def test_cpus_of_an_unknown_node_come_first_and_never_join_a_node_block() -> None:
    machine = Topology(
        tuple(Cpu(cpu, (cpu,), 0, None if cpu >= 4 else cpu // 2) for cpu in range(6)),
        nodes=(0, 1),
    )
    result = run(machine, 3)
    assert cpus(result) == [(4, 5), (0, 1), (2, 3)] and nodes(result) == [None, 0, 1]
