from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from torchserve_cpu.launcher.errors import LauncherError
from torchserve_cpu.launcher.host.lscpu import parse_lscpu, read_lscpu
from torchserve_cpu.launcher.host.sysfs import read_topology

DATA = Path(__file__).resolve().parents[2] / "data" / "topologies"


def test_socket_first_numbering_pairs_siblings_by_core_not_by_cpu_id() -> None:
    topology = read_lscpu(DATA / "xeon-8180m-2s.lscpu")
    cores = topology.cores()
    assert len(topology.cpus) == 112 and len(cores) == 56
    assert [c.id for c in cores[(0, 0)]] == [0, 56]
    assert [c.id for c in cores[(1, 28)]] == [28, 84]
    assert {c.node for c in cores[(1, 55)]} == {1}


def test_adjacent_siblings() -> None:
    cores = read_lscpu(DATA / "cloud-vm-adjacent-smt.lscpu").cores()
    assert [c.id for c in cores[(0, 3)]] == [6, 7]


def test_node_ids_keep_all_digits() -> None:
    topology = read_lscpu(DATA / "gapped-node-ids.lscpu")
    assert topology.nodes == (0, 2, 13, 17)
    assert topology.by_id()[15].node == 17


def test_empty_node_column_gives_none() -> None:
    topology = read_lscpu(DATA / "empty-node-column.lscpu")
    assert {c.node for c in topology.cpus} == {None}
    assert topology.nodes == ()


def test_offline_cpus_are_skipped() -> None:
    topology = read_lscpu(DATA / "offline-cpus.lscpu")
    assert 3 not in topology.cpu_ids and 11 not in topology.cpu_ids and 12 not in topology.cpu_ids
    assert len(topology.cpus) == 13
    assert [c.id for c in topology.cores()[(0, 4)]] == [4]  # sibling 12 is offline


def test_columns_in_another_order() -> None:
    topology = parse_lscpu("# Node,Socket,CPU,Core\n1,0,0,0\n1,0,1,0\n")
    assert [(c.id, c.core, c.node) for c in topology.cpus] == [(0, (0, 0), 1), (1, (0, 0), 1)]


@pytest.mark.parametrize("text", ["", "# CPU,Core,Socket,Node\n", "0,x,0,0\n"])
def test_bad_listing_names_the_source(text: str) -> None:
    with pytest.raises(LauncherError, match="saved.lscpu"):
        parse_lscpu(text, source="saved.lscpu")


def test_missing_file_is_a_launcher_error(tmp_path) -> None:
    with pytest.raises(LauncherError, match="--topology-file"):
        read_lscpu(tmp_path / "nope")


def test_this_machine_agrees_with_sysfs() -> None:
    """The real tool and the sysfs reader see the same CPUs, nodes and sibling groups."""
    text = subprocess.run(
        ["lscpu", "--parse=CPU,Core,Socket,Node"], capture_output=True, text=True, check=True
    ).stdout
    from_lscpu, from_sysfs = parse_lscpu(text), read_topology()
    assert from_lscpu.cpu_ids == from_sysfs.cpu_ids
    assert [c.node for c in from_lscpu.cpus] == [c.node for c in from_sysfs.cpus]

    def groups(topology):
        return sorted(tuple(c.id for c in cpus) for cpus in topology.cores().values())

    assert groups(from_lscpu) == groups(from_sysfs)
