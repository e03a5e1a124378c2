"""The host-wide registry: joins, leaves, dead workers, refusal, and real races."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest

from torchserve_cpu.launcher.errors import LauncherError
from torchserve_cpu.launcher.host.lscpu import read_lscpu
from torchserve_cpu.launcher.host.procfs import start_time
from torchserve_cpu.launcher.host.topology import Cpu, Topology
from torchserve_cpu.launcher.planning.balance import Pool
from torchserve_cpu.launcher.torchserve.registry import (
    REGISTRY_ENV,
    Entry,
    Registry,
    default_directory,
    read_entries,
    sharing_note,
)

DATA = Path(__file__).resolve().parents[2] / "data" / "topologies"


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
    with pytest.raises(LauncherError) as caught:
        registry.join(12, 1, "bert", 99, pool(2), allow_sharing=False)
    assert str(caught.value) == (
        "no free core block for a worker of 'bert': 3 workers would need more blocks than the "
        "2 allowed CPUs (0-1, cpu_launcher_args '') hold apart; lower min_worker or allow "
        "sharing (drop --oversubscribe refuse)"
    )
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


def test_the_directory_is_the_variable_else_dev_shm_else_tmp(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(REGISTRY_ENV, str(tmp_path))
    assert default_directory() == tmp_path
    monkeypatch.delenv(REGISTRY_ENV)
    own = f"torchserve-cpu-{os.getuid()}"  # the serving user's own directory
    if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK):
        assert default_directory() == Path("/dev/shm") / own
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # a read-only /dev/shm
    assert default_directory() == Path(tempfile.gettempdir()) / own


def test_the_file_keeps_every_field(tmp_path: Path) -> None:
    registry = Registry(machine(2), tmp_path, alive=lambda pid, started: True)
    limited = Pool((0, 1), 1.5, "--ncores_per_instance 1")
    for pid in (10, 11):
        registry.join(pid, 1, "m", 99, limited)  # the quota pays for 1 core: 2 workers share
    first = registry.join(12, 1, "other", 98, pool(2))
    state = registry.read()
    assert (state.next_seq, [e.seq for e in state.entries]) == (3, [0, 1, 2])
    assert state.entries[0].pool == limited and first.model == "other" and first.frontend == 98
    assert state.entries[0].node == 0 and state.entries[0].home == (0,)
    assert state.notes and state.notes == Registry(machine(2), tmp_path).read().notes
    assert any("room for 1 disjoint blocks" in note for note in state.notes)


def test_a_file_from_before_home_and_notes_is_still_read(tmp_path: Path) -> None:
    registry = Registry(machine(2), tmp_path, alive=lambda pid, started: True)
    registry.join(10, 1, "a", 99, pool(2))
    data = json.loads(registry.path.read_text())
    del data["notes"], data["entries"][0]["home"]
    registry.path.write_text(json.dumps(data))
    entry = registry.read().entries[0]
    assert (entry.key, entry.cpus, entry.home) == ((10, 1), (0, 1), ())


def test_a_shared_directory_gets_group_writable_files_written_beside_themselves(
    tmp_path: Path, monkeypatch
) -> None:
    """A directory the user chose ($TSCPU_REGISTRY_DIR) is shared on purpose: its files are
    0660 (a group may share it; never every user, issue 18); os.replace is atomic only
    inside one file system, so the temporary copy is made next to the file."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmp"))
    registry = Registry(machine(2), tmp_path / "shared", alive=lambda pid, started: True)
    registry.join(10, 1, "a", 99, pool(2))
    assert stat.S_IMODE(registry.path.stat().st_mode) == 0o660
    assert [p.name for p in registry.path.parent.iterdir() if p.name.startswith(".registry")] == []


def test_record_applied_touches_only_that_worker(tmp_path: Path) -> None:
    registry = Registry(machine(2), tmp_path, alive=lambda pid, started: True)
    registry.join(10, 1, "a", 99, pool(2))
    registry.join(11, 1, "b", 99, pool(2))
    registry.record_applied((11, 1), 1)
    assert [e.applied_threads for e in registry.read().entries] == [None, 1]


def test_a_survivor_that_grew_during_a_restart_goes_back_home(tmp_path: Path) -> None:
    """What each worker holds and where it started reach the balancer (launcher.balance)."""
    dead: set[int] = set()
    registry = Registry(machine(2), tmp_path, alive=lambda pid, started: pid not in dead)
    registry.join(1, 1, "m", 99, pool(2))
    registry.join(2, 1, "m", 99, pool(2))
    dead.add(1)  # kill -9 of the worker on core 0: 2 grows to both cores meanwhile
    assert registry.sweep() and registry.read().find((2, 1)).cpus == (0, 1)
    registry.join(3, 1, "m", 99, pool(2))  # TorchServe's replacement
    seats = {e.pid: e.cpus for e in registry.read().entries}
    assert seats == {2: (1,), 3: (0,)}


def test_a_moved_worker_stays_where_it_is_when_a_replacement_comes(tmp_path: Path) -> None:
    xeon = read_lscpu(DATA / "xeon-8180m-2s.lscpu")
    dead: set[int] = set()
    registry = Registry(xeon, tmp_path, alive=lambda pid, started: pid not in dead)
    everything = Pool(xeon.cpu_ids, None, "")
    for pid in (1, 2, 3, 4):
        registry.join(pid, 1, "m", 99, everything)
    dead.add(3)
    registry.sweep()  # 3 blocks of 14 now: 4 leaves node 1's second block
    moved = registry.read().find((4, 1)).cpus
    assert moved != tuple(range(42, 56))
    registry.join(5, 1, "m", 99, everything)
    seats = {e.pid: e.cpus for e in registry.read().entries}
    assert seats[4] == moved and seats[5] == tuple(range(42, 56))


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


def test_a_sharing_note_names_model_and_instance_and_the_fix_that_helps() -> None:
    shared = pool(2)
    me = Entry(10, 1, "tinyconv", 99, 0, shared, cpus=(0,), shared_with=(11, 12))
    same = Entry(11, 1, "resnet", 99, 1, shared, cpus=(0,))
    other = Entry(12, 1, "bert", 77, 2, shared, cpus=(0,))
    note = sharing_note(me, (me, same, other))
    assert note == (
        "tinyconv worker 10 shares cores 0 with resnet worker 11 (this TorchServe), bert "
        "worker 12 of the TorchServe with pid 77: another TorchServe on this host draws from "
        "the same cores: give each its own CPUs (a cpuset or taskset per instance), or fewer "
        "workers in total")
    alone = sharing_note(replace(me, shared_with=(11,)), (me, same, other))
    assert alone is not None and alone.endswith("more workers than core blocks: lower "
                                                "minWorkers / default_workers_per_model, or "
                                                "give it more CPUs")
    assert sharing_note(replace(me, shared_with=()), (me, same)) is None
