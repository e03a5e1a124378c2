"""The host-wide registry: joins, leaves, dead workers, refusal, and real races."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from torchserve_cpu.launcher.balance import Pool
from torchserve_cpu.launcher.errors import LauncherError
from torchserve_cpu.launcher.procfs import start_time
from torchserve_cpu.launcher.registry import Registry, read_entries
from torchserve_cpu.launcher.topology import Cpu, Topology


def machine(cpus: int) -> Topology:
    """One node, no SMT: CPU i is core i."""
    return Topology(tuple(Cpu(i, (i,), 0, 0) for i in range(cpus)), nodes=(0,), source="test")


def pool(cpus: int, args: str = "") -> Pool:
    return Pool(tuple(range(cpus)), None, args)


def test_joins_reseat_everyone_and_bump_the_generation(tmp_path: Path) -> None:
    registry = Registry(machine(2), tmp_path, alive=lambda pid, started: True)
    first = registry.join(10, 1, "a", 99, pool(2))
    assert (first.cpus, first.threads) == ((0, 1), 2)
    assert registry.read().generation == 1
    second = registry.join(11, 1, "b", 99, pool(2))
    state = registry.read()
    assert state.generation == 2 and second.cpus == (1,)
    assert state.find((10, 1)).cpus == (0,) and state.find((10, 1)).threads == 1
    assert registry.join(11, 1, "b", 99, pool(2)) == second  # asking again changes nothing
    assert registry.read().generation == 2


def test_a_dead_worker_is_dropped_and_its_cores_handed_back(tmp_path: Path) -> None:
    dead: set[int] = set()
    registry = Registry(machine(2), tmp_path, alive=lambda pid, started: pid not in dead)
    registry.join(10, 1, "a", 99, pool(2))
    registry.join(11, 1, "b", 99, pool(2))
    dead.add(11)  # kill -9, or TorchServe scaling it away
    assert registry.sweep() is True
    survivor = registry.read().find((10, 1))
    assert (survivor.cpus, survivor.threads) == ((0, 1), 2)
    assert registry.sweep() is False


def test_a_reused_pid_is_a_different_worker(tmp_path: Path) -> None:
    registry = Registry(machine(2), tmp_path, alive=lambda pid, started: started == 2)
    registry.join(10, 1, "a", 99, pool(2))  # pid 10 now belongs to a process from tick 2
    entry = registry.join(10, 2, "b", 99, pool(2))
    assert [e.key for e in registry.read().entries] == [(10, 2)] and entry.cpus == (0, 1)


def test_refused_worker_gets_the_counts_and_nothing_changes(tmp_path: Path) -> None:
    registry = Registry(machine(2), tmp_path, alive=lambda pid, started: True)
    registry.join(10, 1, "resnet", 99, pool(2))
    registry.join(11, 1, "resnet", 99, pool(2))
    before = registry.read()
    with pytest.raises(LauncherError, match=r"'bert': 3 workers .* 2 allowed CPUs \(0-1"):
        registry.join(12, 1, "bert", 99, pool(2), allow_sharing=False)
    assert registry.read() == before


def test_sharing_is_allowed_by_default_with_divided_threads(tmp_path: Path) -> None:
    registry = Registry(machine(2), tmp_path, alive=lambda pid, started: True)
    for pid in (10, 11, 12):
        registry.join(pid, 1, "m", 99, pool(2))
    entries = {e.pid: e for e in registry.read().entries}
    assert entries[12].shared_with == (10,) and entries[10].shared_with == (12,)
    assert {e.threads for e in entries.values()} == {1}


def test_applied_threads_are_recorded_and_every_write_changes_the_stamp(tmp_path: Path) -> None:
    registry = Registry(machine(2), tmp_path, alive=lambda pid, started: True)
    assert registry.stamp() is None
    registry.join(10, 1, "a", 99, pool(2))
    stamp = registry.stamp()
    registry.record_applied((10, 1), 2)
    assert registry.stamp() != stamp
    assert registry.read().find((10, 1)).applied_threads == 2
    registry.join(11, 1, "b", 99, pool(2))  # 10 must shrink: pending until it applies
    moved = registry.read().find((10, 1))
    assert (moved.threads, moved.applied_threads) == (1, 2)


def test_a_torn_file_is_treated_as_empty(tmp_path: Path) -> None:
    registry = Registry(machine(2), tmp_path, alive=lambda pid, started: True)
    registry.path.write_text("{not json")
    assert registry.join(10, 1, "a", 99, pool(2)).cpus == (0, 1)


def _join_real(directory: str, barrier, results) -> None:
    barrier.wait()  # every process joins at the same instant
    pid = os.getpid()
    registry = Registry(machine(16), Path(directory))
    registry.join(pid, start_time(pid), "m", 1, pool(16))
    barrier.wait()  # everyone has joined: read the final seats while all are alive
    results.put(registry.read().find((pid, start_time(pid))).cpus)
    barrier.wait()


def test_simultaneous_workers_end_up_on_disjoint_cores(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(12), context.Queue()
    workers = [
        context.Process(target=_join_real, args=(str(tmp_path), barrier, results))
        for _ in range(12)
    ]
    for worker in workers:
        worker.start()
    seats = [results.get(timeout=30) for _ in workers]
    for worker in workers:
        worker.join(30)
    flat = [cpu for cpus in seats for cpu in cpus]
    assert len(flat) == len(set(flat)) == 12  # one core each, none twice
    assert read_entries(tmp_path) == ()  # all of them have exited: nothing is held
