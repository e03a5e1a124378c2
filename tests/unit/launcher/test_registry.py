from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from launcher.errors import LauncherError
from launcher.procfs import start_time
from launcher.registry import Registry, all_claims

LAYOUT = [(0, 1), (2, 3), (4, 5)]


def test_first_free_block_and_idempotent_claims(tmp_path: Path) -> None:
    registry = Registry("k", LAYOUT, tmp_path, alive=lambda pid, started: True)
    assert registry.claim(10, 1, "m") == 0
    assert registry.claim(11, 1, "m") == 1
    assert registry.claim(10, 1, "m") == 0  # the same process asking again
    assert [c.cpus for c in registry.claims()] == [(0, 1), (2, 3)]


def test_dead_workers_blocks_are_reclaimed(tmp_path: Path) -> None:
    dead: set[int] = set()
    registry = Registry("k", LAYOUT, tmp_path, alive=lambda pid, started: pid not in dead)
    for pid in (10, 11, 12):
        registry.claim(pid, 1, "m")
    dead.add(11)
    assert registry.claim(13, 1, "m") == 1  # 11 died: its block is the first free one


def test_reused_pid_is_a_different_process(tmp_path: Path) -> None:
    registry = Registry("k", LAYOUT, tmp_path, alive=lambda pid, started: started == 2)
    registry.claim(10, 1, "m")  # started at tick 1; pid 10 now belongs to a process from tick 2
    assert registry.claim(10, 2, "m") == 0


def test_full_registry_names_the_holders(tmp_path: Path) -> None:
    registry = Registry("k", LAYOUT[:1], tmp_path, alive=lambda pid, started: True)
    registry.claim(10, 1, "resnet")
    with pytest.raises(LauncherError, match="pid 10 \\(resnet\\).*--ninstances"):
        registry.claim(11, 1, "bert")


def test_torn_file_is_treated_as_empty(tmp_path: Path) -> None:
    registry = Registry("k", LAYOUT, tmp_path, alive=lambda pid, started: True)
    registry.path.write_text("{not json")
    assert registry.claim(10, 1, "m") == 0


def _claim_real(directory: str, barrier, results) -> None:
    barrier.wait()  # every process claims at the same instant
    pid = os.getpid()
    registry = Registry("race", [(i,) for i in range(16)], Path(directory))
    results.put(registry.claim(pid, start_time(pid), "m"))
    barrier.wait()  # and holds its claim until all have claimed


def test_simultaneous_workers_never_share_a_block(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(12), context.Queue()
    workers = [
        context.Process(target=_claim_real, args=(str(tmp_path), barrier, results))
        for _ in range(12)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    blocks = sorted(results.get(timeout=5) for _ in workers)
    assert blocks == list(range(12))
    assert all_claims(tmp_path) == []  # all of them have exited: nothing is held
