"""The host-wide registry under contention, with real processes and real liveness.

tests/unit/launcher/test_registry.py already races 12 joiners on an empty registry.
Here the race happens while live workers hold blocks of a reserved layout
(--ninstances 8, --oversubscribe refuse) and a dead one left a stale entry, with more
joiners than free blocks: nobody may get a live worker's block, the dead one's block is
handed out again, and the surplus is refused with the counts.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from torchserve_cpu.launcher.errors import LauncherError
from torchserve_cpu.launcher.host.procfs import start_time
from torchserve_cpu.launcher.host.topology import Cpu, Topology
from torchserve_cpu.launcher.planning.balance import Pool
from torchserve_cpu.launcher.torchserve.registry import Registry

BLOCKS = 8
MACHINE = Topology(tuple(Cpu(i, (i,), 0, 0) for i in range(BLOCKS)), nodes=(0,))
POOL = Pool(tuple(range(BLOCKS)), None, f"--ninstances {BLOCKS} --oversubscribe refuse")
CONTEXT = multiprocessing.get_context("fork")


def registry(directory: Path) -> Registry:
    return Registry(MACHINE, directory)


def claim_self(directory: Path) -> int:
    """Join as a worker; the one CPU of the block it was given."""
    pid = os.getpid()
    entry = registry(directory).join(pid, start_time(pid) or 0, f"worker-{pid}", 1, POOL,
                                     allow_sharing=False)
    return entry.cpus[0]


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
    assert all(f"{BLOCKS + 1} workers" in error and "0-7" in error for error in errors)
    # Everyone but this process has exited: only its own entry is left after a sweep.
    registry(tmp_path).sweep()
    assert [(e.cpus, e.pid) for e in registry(tmp_path).read().entries] == [
        ((mine,), os.getpid())
    ]
