"""Exact expectations of the planner over saved topologies."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchserve_cpu.launcher.errors import LauncherError
from torchserve_cpu.launcher.host.lscpu import read_lscpu
from torchserve_cpu.launcher.host.sysfs import read_topology
from torchserve_cpu.launcher.host.sysroot import SysRoot
from torchserve_cpu.launcher.host.topology import Topology
from torchserve_cpu.launcher.planning.options import parse_launcher_args
from torchserve_cpu.launcher.planning.planner import plan

DATA = Path(__file__).resolve().parents[2] / "data" / "topologies"


def blocks(topology: Topology, workers: int, args: str = "") -> list[tuple[int, ...]]:
    return [b.cpus for b in plan(topology, parse_launcher_args(args), workers).blocks]


def span(low: int, high: int, step: int = 1) -> tuple[int, ...]:
    return tuple(range(low, high + 1, step))


@pytest.fixture(scope="module")
def xeon() -> Topology:
    return read_lscpu(DATA / "xeon-8180m-2s.lscpu")


def test_xeon_8180m_four_workers(xeon: Topology) -> None:
    result = plan(xeon, parse_launcher_args(""), 4)
    expected = [span(0, 13), span(14, 27), span(28, 41), span(42, 55)]
    assert [b.cpus for b in result.blocks] == expected
    assert [b.node for b in result.blocks] == [0, 0, 1, 1]
    assert [b.threads for b in result.blocks] == [14] * 4
    assert result.leftover == ()


def test_xeon_one_worker_spans_both_sockets_and_says_so(xeon: Topology) -> None:
    result = plan(xeon, parse_launcher_args(""), 1)
    assert result.blocks[0].cpus == span(0, 55) and result.blocks[0].node is None
    assert any("span" in note for note in result.notes)


def test_xeon_one_worker_skip_cross_node_stays_on_node_0(xeon: Topology) -> None:
    result = plan(xeon, parse_launcher_args("--skip_cross_node_cores"), 1)
    assert result.blocks[0].cpus == span(0, 27) and result.blocks[0].node == 0
    assert result.leftover == span(28, 55)


def test_xeon_three_workers_shrink_rather_than_span(xeon: Topology) -> None:
    result = plan(xeon, parse_launcher_args(""), 3)
    assert [b.cpus for b in result.blocks] == [span(0, 13), span(14, 27), span(28, 41)]
    assert result.leftover == span(42, 55)
    assert any("left over" in note for note in result.notes)


def test_xeon_two_workers_one_per_socket(xeon: Topology) -> None:
    assert blocks(xeon, 2) == [span(0, 27), span(28, 55)]


def test_xeon_logical_cores_keep_siblings_together(xeon: Topology) -> None:
    result = plan(xeon, parse_launcher_args("--use_logical_core"), 4)
    assert result.blocks[0].cpus == span(0, 13) + span(56, 69)
    assert [b.threads for b in result.blocks] == [28] * 4


def test_xeon_node_id_and_ncores(xeon: Topology) -> None:
    assert blocks(xeon, 2, "--node_id 1 --ncores_per_instance 4") == [span(28, 31), span(32, 35)]


def test_xeon_core_list_is_cpu_ids(xeon: Topology) -> None:
    # CPUs 0 and 56 are one core: one thread, not two
    assert blocks(xeon, 1, "--core_list 0-3,56-59") == [span(0, 3)]


def test_xeon_throughput_and_latency_modes(xeon: Topology) -> None:
    assert blocks(xeon, 2, "--throughput_mode") == [span(0, 27), span(28, 55)]
    assert blocks(xeon, 3, "--latency_mode") == [span(0, 3), span(4, 7), span(28, 31)]


def test_ninstances_reserves_slots_for_scaling(xeon: Topology) -> None:
    result = plan(xeon, parse_launcher_args("--ninstances 4"), 2)
    assert len(result.blocks) == 4 and result.workers == 2


def test_adjacent_smt_siblings_never_share_a_core() -> None:
    topology = read_lscpu(DATA / "cloud-vm-adjacent-smt.lscpu")
    assert blocks(topology, 2) == [span(0, 14, 2), span(16, 30, 2)]
    assert blocks(topology, 4) == [span(0, 6, 2), span(8, 14, 2), span(16, 22, 2), span(24, 30, 2)]


def test_several_nodes_per_socket() -> None:
    topology = read_lscpu(DATA / "epyc-2s-nps4.lscpu")
    result = plan(topology, parse_launcher_args(""), 8)
    assert [b.cpus for b in result.blocks] == [span(8 * n, 8 * n + 7) for n in range(8)]
    assert [b.node for b in result.blocks] == list(range(8))
    # 4 workers: two nodes each, blocks of 16 cross nodes and say so
    four = plan(topology, parse_launcher_args(""), 4)
    assert [b.cpus for b in four.blocks][0] == span(0, 15) and four.blocks[0].node is None


def test_gapped_node_ids_above_ten() -> None:
    topology = read_lscpu(DATA / "gapped-node-ids.lscpu")
    result = plan(topology, parse_launcher_args(""), 4)
    assert [b.node for b in result.blocks] == [0, 2, 13, 17]
    assert blocks(topology, 2, "--node_id 13") == [(8, 9), (10, 11)]
    with pytest.raises(LauncherError, match="--node_id 1:.*0, 2, 13, 17"):
        plan(topology, parse_launcher_args("--node_id 1"), 1)


def test_empty_node_column() -> None:
    topology = read_lscpu(DATA / "empty-node-column.lscpu")
    result = plan(topology, parse_launcher_args(""), 2)
    assert [b.cpus for b in result.blocks] == [(0, 1), (2, 3)]
    assert [b.node for b in result.blocks] == [None, None]


def test_offline_cpus_are_not_planned() -> None:
    topology = read_lscpu(DATA / "offline-cpus.lscpu")
    # cores 0..7 minus core 3 (CPUs 3 and 11 offline); CPU 12 offline leaves core 4 on CPU 4
    assert blocks(topology, 7) == [(0,), (1,), (2,), (4,), (5,), (6,), (7,)]
    with pytest.raises(LauncherError, match="--core_list names CPUs 3"):
        plan(topology, parse_launcher_args("--core_list 2-3"), 1)


def test_arm_without_smt() -> None:
    topology = read_lscpu(DATA / "graviton3-arm.lscpu")
    assert blocks(topology, 4) == [span(16 * i, 16 * i + 15) for i in range(4)]


def test_hybrid_blocks_do_not_mix_core_kinds(sysfs_tree) -> None:
    topology = read_topology(SysRoot(sysfs_tree("sysfs-alder-lake-hybrid.txt")))
    assert blocks(topology, 2) == [span(0, 14, 2), span(16, 23)]
    assert blocks(topology, 4) == [(0, 2, 4, 6), (8, 10, 12, 14), span(16, 19), span(20, 23)]
    assert blocks(topology, 1) == [span(0, 14, 2) + span(16, 23)]  # too big for one kind


def test_hybrid_from_lscpu_still_one_thread_per_core() -> None:
    topology = read_lscpu(DATA / "alder-lake-hybrid.lscpu")
    assert blocks(topology, 1) == [span(0, 14, 2) + span(16, 23)]


def test_this_machine() -> None:
    topology = read_lscpu(DATA / "this-machine-epyc-2core.lscpu")
    assert blocks(topology, 2) == [(0,), (1,)]
    assert blocks(topology, 1) == [(0, 1)]


def test_zero_workers_is_an_empty_plan(xeon: Topology) -> None:
    options = parse_launcher_args("")
    result = plan(xeon, options, 0)
    assert result.blocks == () and len(result.leftover) == 56
    assert (result.workers, result.notes, result.options) == (0, (), options)


@pytest.mark.parametrize(
    ("args", "workers", "message"),
    [
        ("", 57, "57 workers need at least 57 physical cores, but only 56 are usable (allowed: "
                 "0-55); lower default_workers_per_model or minWorkers, or widen the cpuset"),
        ("--ninstances 2", 3, "--ninstances 2 is fewer than the 3 workers the config asks for "
                              "(default_workers_per_model / minWorkers)"),
        ("--ncores_per_instance 20", 3, "--ncores_per_instance 20 x 3 workers needs 60 physical "
                                        "cores; only 56 usable (allowed: 0-55)"),
        ("--throughput_mode", 3, "--throughput_mode gives one block per NUMA node (2), but the "
                                 "config asks for 3 workers; lower the workers or drop the flag"),
        ("--ncores_per_instance 18 --skip_cross_node_cores", 3,
         "--ncores_per_instance 18 with --skip_cross_node_cores: only 2 blocks fit inside "
         "single nodes"),
        ("--core_list 200", 1, "--core_list names CPUs 200 that are offline or not allowed here; "
                               "allowed: 0-111"),
    ],
)
def test_errors_name_the_setting_and_the_fix(
    xeon: Topology, args: str, workers: int, message: str
) -> None:
    with pytest.raises(LauncherError) as caught:
        plan(xeon, parse_launcher_args(args), workers)
    assert str(caught.value) == message


def test_negative_workers_and_no_cpus_are_errors(xeon: Topology) -> None:
    with pytest.raises(LauncherError, match=r"^workers must be >= 0, got -1$"):
        plan(xeon, parse_launcher_args(""), -1)
    with pytest.raises(LauncherError, match=r"^xeon: no allowed online CPUs to plan over$"):
        plan(Topology((), source="xeon"), parse_launcher_args(""), 1)


def test_sizes_that_exactly_fill_the_machine_are_allowed(xeon: Topology) -> None:
    assert blocks(xeon, 2, "--ncores_per_instance 28") == [span(0, 27), span(28, 55)]
    assert len(blocks(xeon, 2, "--ninstances 2")) == 2


def test_explicit_block_size_that_cannot_stay_local_spans(xeon: Topology) -> None:
    result = plan(xeon, parse_launcher_args("--ncores_per_instance 20"), 2)
    assert [b.cpus for b in result.blocks] == [span(0, 19), span(28, 47)]
    three = plan(xeon, parse_launcher_args("--ncores_per_instance 18"), 3)
    assert three.blocks[1].node is None  # 18 + 18 + 18 > 28 per node: one block spans


def test_json_shape(xeon: Topology) -> None:
    data = plan(xeon, parse_launcher_args(""), 4).to_dict()
    assert data["workers"][0] == {"cpus": list(range(14)), "node": 0, "threads": 14}
    small = plan(xeon.restrict(range(3)), parse_launcher_args("--node_id 0"), 2).to_dict()
    assert small == {
        "workers": [{"cpus": [0], "node": 0, "threads": 1}, {"cpus": [1], "node": 0, "threads": 1}],
        "requested_workers": 2,
        "leftover_cpus": [2],
        "notes": ["1 CPUs left over: 2"],
        "launcher_args": "--node_id 0",
    }


def test_notes_say_only_what_happened(xeon: Topology) -> None:
    assert plan(xeon, parse_launcher_args(""), 4).notes == ()  # no shrink, no span, no rest
    assert plan(xeon, parse_launcher_args(""), 1).notes == (
        "blocks of 56 cores do not fit in one NUMA node (largest has 28 cores of one kind): "
        "some blocks span nodes",
    )


def test_a_quota_below_the_cores_limits_the_blocks_and_says_so(xeon: Topology) -> None:
    two = xeon.restrict((0, 1))
    assert plan(two.with_quota(2.0), parse_launcher_args(""), 1).notes == ()
    limited = plan(two.with_quota(1.5), parse_launcher_args(""), 1)
    assert [b.cpus for b in limited.blocks] == [(0,)]
    assert limited.notes == (
        "cgroup CPU quota 1.5 CPUs: blocks use 1 of 2 allowed cores so threads are not throttled",
        "1 CPUs left over: 1",
    )
