"""The host-wide registry under contention, with real processes and real liveness.

tests/unit/launcher/test_registry.py already races 12 claimers on an empty registry.
Here the race happens while live workers hold blocks and a dead one left a stale claim,
with more claimers than free blocks: nobody may get a live worker's block, the dead
one's block is handed out again, and the surplus gets an error naming the holders.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from launcher.errors import LauncherError
from launcher.procfs import start_time
from launcher.registry import Registry

BLOCKS = 8
LAYOUT = [(cpu,) for cpu in range(BLOCKS)]
CONTEXT = multiprocessing.get_context("fork")


def registry(directory: Path) -> Registry:
    return Registry("race", LAYOUT, directory)


def claim_self(directory: Path) -> int:
    pid = os.getpid()
    return registry(directory).claim(pid, start_time(pid) or 0, f"worker-{pid}")


def hold_block(directory: str, claimed, release) -> None:
    """A live worker: claims, then stays alive until released."""
    claimed.put(claim_self(Path(directory)))
    release.wait(60)


def die_holding(directory: str, claimed) -> None:
    """A worker that claims and dies (as after kill -9): its claim stays in the file."""
    claimed.put(claim_self(Path(directory)))


def race(directory: str, barrier, results) -> None:
    barrier.wait()  # every claimer starts at the same instant
    try:
        results.put(("block", claim_self(Path(directory))))
    except LauncherError as error:
        results.put(("error", str(error)))
    barrier.wait()  # and holds its claim until all have tried


@pytest.mark.parametrize("attempt", range(3))
def test_race_never_hands_out_a_live_workers_block(tmp_path: Path, attempt: int) -> None:
    claimed, release = CONTEXT.Queue(), CONTEXT.Event()
    mine = claim_self(tmp_path)  # this test process is a live holder
    live = CONTEXT.Process(target=hold_block, args=(str(tmp_path), claimed, release))
    live.start()
    live_block = claimed.get(timeout=30)
    dead = CONTEXT.Process(target=die_holding, args=(str(tmp_path), claimed))
    dead.start()
    dead_block = claimed.get(timeout=30)
    dead.join(30)
    held = {mine, live_block}
    free = BLOCKS - len(held)
    claimers = free + 3  # more than there are blocks
    barrier, results = CONTEXT.Barrier(claimers), CONTEXT.Queue()
    racers = [CONTEXT.Process(target=race, args=(str(tmp_path), barrier, results))
              for _ in range(claimers)]
    try:
        for racer in racers:
            racer.start()
        outcomes = [results.get(timeout=60) for _ in racers]
    finally:
        for racer in racers:
            racer.join(30)
        release.set()
        live.join(30)
    blocks = sorted(value for kind, value in outcomes if kind == "block")
    errors = [value for kind, value in outcomes if kind == "error"]
    assert len(blocks) == len(set(blocks)) == free  # no block handed out twice
    assert held.isdisjoint(blocks)  # nor a live worker's
    assert dead_block in blocks  # the dead worker's block was reclaimed
    assert len(errors) == claimers - free
    assert all(f"pid {live.pid}" in error and f"pid {os.getpid()}" in error for error in errors)
    # Everyone but this process has exited: only its own claim is left.
    assert [(c.block, c.pid) for c in registry(tmp_path).claims()] == [(mine, os.getpid())]
