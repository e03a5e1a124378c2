"""Real TorchServe on this 2-core machine, workers pinned by launcher.worker."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from benchmarks import loopback_torchserve as server
from tests.integration.launcher.launcher_probe import (
    allowed_list,
    ask,
    env_with_registry,
    settled,
    wait_for,
    write_config,
)
from torchserve_cpu.launcher.doctor import inspect
from torchserve_cpu.launcher.planning.allocators import mapped_allocator
from torchserve_cpu.launcher.torchserve.registry import read_entries


@pytest.fixture(scope="module")
def jemalloc_server(probe_store: Path, tmp_path_factory: pytest.TempPathFactory):
    """`launcher serve` with 2 workers and --enable_jemalloc; stopped after the module."""
    directory = tmp_path_factory.mktemp("serve-jemalloc")
    registry = directory / "registry"
    registry.mkdir()
    config = write_config(
        directory,
        cpu_launcher_enable="true",
        cpu_launcher_args="--enable_jemalloc",
        default_workers_per_model="2",
    )
    env = {**env_with_registry(registry), "TSCPU_PROBE_LOAD_S": "3"}  # loads overlap
    handle, prepared = server.start_with_launcher(config, probe_store, run_dir=directory / "run",
                                                  extra_env=env)
    try:
        handle.wait_ready(["probe"], timeout=180)
        yield handle, prepared, registry
    finally:
        handle.stop()


def test_two_workers_get_disjoint_cpus_and_matching_threads(jemalloc_server) -> None:
    handle, prepared, registry = jemalloc_server
    assert [b.cpus for b in prepared.plan.blocks] == [(0,), (1,)]
    # Read once settled: on a Zen 3 a worker was read on {0,1} while its neighbour, just
    # started, already sat on {1} (the first had not yet applied its shrunk seat).
    pids = wait_for(lambda: settled(handle, registry, {"probe": 2}), timeout=120)
    first, second = (allowed_list(pid) for pid in pids)
    assert first.isdisjoint(second) and first | second == {0, 1}
    seen = {}
    for _ in range(20):  # requests land on both workers sooner or later
        answer = ask(handle)
        seen[answer["pid"]] = answer
        if len(seen) == 2:
            break
    for answer in seen.values():
        assert answer["threads"] == len(answer["affinity"]) == 1
        # the worker seated first (both cores, 2 threads) and re-seated by its neighbour
        # while loading applied 1 thread during the load, not at its first batch
        assert answer["threads_at_ready"] == 1, answer
        assert set(answer["affinity"]) == allowed_list(answer["pid"])
        assert answer["placement"].startswith(f"cores={answer['affinity'][0]} node=0 threads=1")


def test_jemalloc_is_really_mapped_in_the_workers(jemalloc_server) -> None:
    handle, prepared, _ = jemalloc_server
    assert prepared.env["MALLOC_CONF"] == "metadata_thp:auto,dirty_decay_ms:-1,muzzy_decay_ms:-1"
    for pid in handle.worker_pids("probe"):
        assert mapped_allocator(pid) == "jemalloc"
    assert "allocator=jemalloc" in ask(handle)["placement"]


def test_each_worker_logs_one_placement_line(jemalloc_server) -> None:
    handle, _, _ = jemalloc_server
    log = (handle.log_dir / "model_log.log").read_text()
    assert log.count("allocator=jemalloc") >= 2


def test_doctor_sees_the_workers_and_no_problem(jemalloc_server) -> None:
    handle, _, registry = jemalloc_server
    pids = set(handle.worker_pids("probe"))
    report = inspect(entries=read_entries(registry))
    mine = [w for w in report.workers if w.pid in pids]
    assert {w.pid for w in mine} == pids
    assert all(w.threads == 1 and w.allocator == "jemalloc" for w in mine)
    assert not [p for p in report.problems if any(str(pid) in p for pid in pids)]


def test_killed_worker_is_replaced_on_its_own_block(jemalloc_server) -> None:
    """Runs last in this module: it changes the server."""
    handle, _, _ = jemalloc_server
    victim, survivor = handle.worker_pids("probe")
    victim_cpus, survivor_cpus = allowed_list(victim), allowed_list(survivor)
    os.kill(victim, signal.SIGKILL)  # a worker of the server this test started

    def replaced() -> int | None:
        pids = set(handle.worker_pids("probe"))
        new = pids - {victim, survivor}
        return new.pop() if len(pids) == 2 and survivor in pids and new else None

    newcomer = wait_for(replaced, timeout=180)
    # the live worker was not restarted: it grew while alone and went back to its cores
    wait_for(lambda: allowed_list(survivor) == survivor_cpus, timeout=10, step=0.05)
    assert allowed_list(newcomer) == victim_cpus
    assert allowed_list(newcomer).isdisjoint(allowed_list(survivor))


def test_plain_torchserve_under_taskset_uses_only_cpu_1(
    probe_store: Path, tmp_path: Path, registry_dir: Path
) -> None:
    """No serve command: TorchServe's own run_cpu wrapper runs too, the worker finds the
    config through the frontend's -f and keeps to the frontend's CPUs (a cpuset)."""
    config = write_config(tmp_path, cpu_launcher_enable="true", default_workers_per_model="1")
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {1})  # what `taskset -c 1 torchserve --start` gives TorchServe
    try:
        handle = server.start(
            config, probe_store, env=env_with_registry(registry_dir), run_dir=tmp_path / "run"
        )
    finally:
        os.sched_setaffinity(0, before)
    try:
        handle.wait_ready(["probe"], timeout=180)
        (pid,) = handle.worker_pids("probe")
        assert allowed_list(handle.pid) == {1}
        assert allowed_list(pid) == {1}
        answer = ask(handle)
        assert answer["affinity"] == [1] and answer["threads"] == 1
        assert answer["placement"].startswith("cores=1 node=0 threads=1")
    finally:
        handle.stop()


def test_one_worker_on_a_two_core_block_runs_two_threads_on_tcmalloc(
    probe_store: Path, tmp_path: Path
) -> None:
    """The default launch (tcmalloc, elastic blocks) with one worker: its block is both
    cores, and the live process shows it: two intra-op threads, affinity {0, 1}, tcmalloc
    mapped. Every other test here runs 1-CPU blocks, where "threads = block" is trivial."""
    registry = tmp_path / "registry"
    registry.mkdir()
    config = write_config(tmp_path, cpu_launcher_enable="true", default_workers_per_model="1")
    handle, prepared = server.start_with_launcher(
        config, probe_store, run_dir=tmp_path / "run", extra_env=env_with_registry(registry)
    )
    try:
        handle.wait_ready(["probe"], timeout=180)
        (pid,) = handle.worker_pids("probe")
        answer = ask(handle)
        assert answer["pid"] == pid
        assert answer["threads"] == 2 and answer["affinity"] == [0, 1]
        assert allowed_list(pid) == {0, 1}
        assert mapped_allocator(pid) == "tcmalloc"
        (entry,) = read_entries(registry)
        assert list(entry.cpus) == [0, 1]
        assert entry.threads == 2
    finally:
        handle.stop()
