"""A worker is (pid, start time): a process that gets a dead worker's pid is someone else.

Pids are reused (pid_max wraps; in a container they restart from 1), so a claim keyed by
pid alone would hand a dead worker's seat, and the threads it had applied, to whatever
process got its number. These tests use this process's real pid and start time from
/proc (the registry's default liveness check); the "dead worker" is an entry with this
pid and an earlier start time.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from torchserve_cpu.launcher.host.procfs import start_time
from torchserve_cpu.launcher.host.topology import Cpu, Topology
from torchserve_cpu.launcher.planning.balance import Pool
from torchserve_cpu.launcher.torchserve.registry import Registry, read_entries

MACHINE = Topology(tuple(Cpu(i, (i,), 0, 0) for i in range(2)), nodes=(0,), source="test")
POOL = Pool((0, 1), None, "")


@pytest.fixture
def me() -> tuple[int, int]:
    pid = os.getpid()
    started = start_time(pid)
    assert started is not None
    return pid, started


@pytest.fixture
def neighbour() -> tuple[int, int]:
    """A worker that stays alive throughout: init, which never exits."""
    started = start_time(1)
    if started is None:
        pytest.skip("/proc/1/stat is not readable here")
    return 1, started


def seat_a_dead_worker(directory: Path, dead: tuple[int, int], neighbour: tuple[int, int]):
    """The registry as the dead worker left it: seated on core 1, threads applied."""
    believing = Registry(MACHINE, directory, alive=lambda pid, started: True)
    believing.join(*neighbour, "neighbour", 7, POOL)
    old = believing.join(*dead, "old-model", 7, POOL)
    believing.record_applied(old.key, old.threads)
    return believing.read().find(old.key)


def test_a_new_process_with_a_dead_workers_pid_does_not_inherit_its_seat(
    tmp_path: Path, me: tuple[int, int], neighbour: tuple[int, int]
) -> None:
    pid, started = me
    old = seat_a_dead_worker(tmp_path, (pid, started - 1), neighbour)
    assert (old.cpus, old.applied_threads, old.seq) == ((1,), 1, 1)
    registry = Registry(MACHINE, tmp_path)  # real liveness: /proc/<pid>/stat start time
    entry = registry.join(pid, started, "new-model", 8, POOL)
    assert entry.key == (pid, started) and entry.model == "new-model" and entry.frontend == 8
    assert entry.seq == 2, "a newcomer queues behind the live workers"
    assert entry.applied_threads is None, "nothing applied yet: it must apply its seat"
    assert [e.key for e in registry.read().entries] == [neighbour, (pid, started)]


def test_doctor_lists_the_live_process_not_the_dead_claim(
    tmp_path: Path, me: tuple[int, int], neighbour: tuple[int, int]
) -> None:
    pid, started = me
    seat_a_dead_worker(tmp_path, (pid, started - 1), neighbour)
    assert [e.key for e in read_entries(tmp_path)] == [neighbour]
    Registry(MACHINE, tmp_path).join(pid, started, "new-model", 8, POOL)
    assert [(e.key, e.model) for e in read_entries(tmp_path)] == [
        (neighbour, "neighbour"), ((pid, started), "new-model")]


def test_a_late_leave_or_record_for_the_dead_claim_leaves_the_new_owner_alone(
    tmp_path: Path,
) -> None:
    """Both claims still listed (the sweep has not run): only the exact key is touched."""
    registry = Registry(MACHINE, tmp_path, alive=lambda pid, started: True)
    registry.join(10, 1, "old-model", 7, POOL)
    new = registry.join(10, 2, "new-model", 8, POOL)
    registry.record_applied((10, 1), 2)
    assert registry.read().find((10, 2)).applied_threads is None
    registry.leave((10, 1))
    assert [e.key for e in registry.read().entries] == [(10, 2)]
    assert registry.read().find((10, 2)).cpus == (0, 1)  # it grew into the freed core
    assert new.cpus == (1,)
    stamp = registry.stamp()
    registry.leave((10, 1))  # again: nothing to do, nothing written
    assert registry.stamp() == stamp
    registry.leave((10, 2))
    assert registry.read().entries == ()
