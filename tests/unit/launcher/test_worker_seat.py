"""PinnedWorker following its seat in a real registry file, threads and affinity left alone
(apply is faked): the stamp race that left a worker on one core of two, and a worker whose
parent is gone not rejoining."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from torchserve_cpu.launcher.host.sysroot import SysRoot
from torchserve_cpu.launcher.planning.options import parse_launcher_args
from torchserve_cpu.launcher.torchserve import apply, worker
from torchserve_cpu.launcher.torchserve.registry import Entry, Registry
from torchserve_cpu.launcher.torchserve.worker import PinnedWorker, SeatChange, seat_change

from .test_registry import machine, pool

ME = (10, 1)  # (pid, start time) of the worker under test; the others are 11, 12, ...


@pytest.fixture
def applied(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Thread counts the worker applied, in order (nothing touches this process)."""
    threads: list[int] = []
    monkeypatch.setattr(apply, "set_environ", lambda values: None)
    monkeypatch.setattr(apply, "set_torch_threads", lambda n: threads.append(n) or n)
    return threads


def seated(tmp_path: Path) -> tuple[Registry, PinnedWorker]:
    registry = Registry(machine(2), tmp_path, alive=lambda pid, started: True)
    entry = registry.join(*ME, "a", 99, pool(2))
    options = parse_launcher_args("--disable_numactl --disable_taskset")  # no pinning here
    return registry, PinnedWorker(registry, entry, options, SysRoot(), "")


def test_a_write_landing_right_after_ours_is_still_followed(
        tmp_path: Path, applied: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    """Between this worker's own write (applied_threads) and its next look at the file,
    its neighbour leaves: the next batch must see that. (Taking the file's stamp after our
    own write swallowed such a change: a worker stayed on 1 core of 2 in CI.)"""
    registry, seat = seated(tmp_path)
    assert seat.placement.cpus == (0, 1) and applied == [2]
    real = registry.record_applied

    def and_then_the_neighbour_leaves(key, threads, *allocator):
        real(key, threads, *allocator)
        registry.leave((11, 1))

    registry.join(11, 1, "b", 99, pool(2))  # this worker shrinks to one core...
    monkeypatch.setattr(registry, "record_applied", and_then_the_neighbour_leaves)
    seat.refresh()  # ...applies 1 thread, writes it; right after, "b" leaves
    assert applied == [2, 1]
    seat.refresh()
    assert seat.placement.cpus == (0, 1) and applied == [2, 1, 2]


def test_an_orphaned_worker_does_not_rejoin(tmp_path: Path, applied: list[int],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """TorchServe stops a worker by killing its parent (run_cpu's python with its launcher
    on); swept meanwhile, the orphan must not claim a seat again while it winds down."""
    registry, seat = seated(tmp_path)
    registry.leave(ME)  # swept: its parent was killed
    monkeypatch.setattr(worker.os, "getppid", lambda: 1)  # re-parented
    seat.refresh()
    assert registry.read().entries == ()


def test_a_worker_swept_by_mistake_rejoins(tmp_path: Path, applied: list[int]) -> None:
    registry, seat = seated(tmp_path)
    registry.leave(ME)  # the file was removed or rewritten by mistake; the parent lives
    seat.refresh()
    assert [e.key for e in registry.read().entries] == [ME]


# -- the decision alone ---------------------------------------------------------------------


def seat(cpus: tuple[int, ...] = (), threads: int = 0, node: int | None = 0) -> Entry:
    return Entry(10, 1, "a", 99, 0, pool(2), cpus=cpus, node=node, threads=threads)


@pytest.mark.parametrize(("applied", "threads_applied", "new", "inference", "expected"), [
    # first seat: pin and set threads, nothing to log as a move
    (seat(), 0, seat((0, 1), 2), True, SeatChange(repin=True, rethread=True, moved=False)),
    # unchanged: nothing
    (seat((0, 1), 2), 2, seat((0, 1), 2), True, SeatChange(False, False, False)),
    # shrunk by a newcomer: re-pin, threads follow on the inference thread only
    (seat((0, 1), 2), 2, seat((0,), 1), True, SeatChange(True, True, True)),
    (seat((0, 1), 2), 2, seat((0,), 1), False, SeatChange(True, False, True)),
    # same cores, threads not applied yet (the watcher moved it): the next batch sets them
    (seat((0,), 1), 2, seat((0,), 1), True, SeatChange(False, True, False)),
    # same cores, another node's memory
    (seat((0,), 1, node=0), 1, seat((0,), 1, node=1), True, SeatChange(False, True, False)),
])
def test_seat_change(applied: Entry, threads_applied: int, new: Entry, inference: bool,
                     expected: SeatChange) -> None:
    assert seat_change(applied, threads_applied, new, inference) == expected


def test_a_seat_moved_while_idle_shows_its_new_cores_and_threads_at_once(
        tmp_path: Path, applied: list[int]) -> None:
    """Issue 18: the placement metric read Cores="0" with value 2 until the next batch; it
    now changes with the seat, as the threads the next batch applies first."""
    registry, pinned = seated(tmp_path)
    heard: list[tuple[tuple[int, ...], int]] = []
    pinned.on_placement(lambda placement: heard.append((placement.cpus, placement.threads)))
    registry.join(11, 1, "b", 99, pool(2))  # a second worker: this one shrinks to one core
    pinned._sync(inference_thread=False)  # the watcher thread's view, then its nudge
    assert heard == [((0, 1), 2), ((0,), 1)] and applied == [2, 1]
    pinned.refresh()  # nothing left for the next batch
    assert applied == [2, 1] and heard[-1] == ((0,), 1)


def test_a_re_balance_found_while_loading_reaches_the_loading_thread(
        tmp_path: Path, applied: list[int]) -> None:
    """Workers started together re-seat each other during their loads: the watcher's
    signal makes the busy main thread apply 1 thread at once, not at the first batch (a
    load ran with 2 OpenMP threads on 1 core for 211 s instead of 2)."""
    registry, pinned = seated(tmp_path)
    registry.join(11, 1, "b", 99, pool(2))
    watcher = threading.Thread(target=pinned._sync, kwargs={"inference_thread": False})
    watcher.start()
    deadline = time.monotonic() + 10
    while applied[-1] != 1 and time.monotonic() < deadline:
        sum(range(1000))  # the load: Python steps between which the handler can run
    watcher.join()
    assert applied == [2, 1] and pinned.placement.cpus == (0,)


@pytest.fixture(autouse=True)
def default_nudge_handler() -> Iterator[None]:
    """Each PinnedWorker here installs its handler: leave the process as it was."""
    yield
    signal.signal(worker.NUDGE_SIGNAL, signal.SIG_DFL)


def test_workers_of_this_torchserve_that_leave_are_announced_once_as_they_last_sat(
        tmp_path: Path, applied: list[int]) -> None:
    """Issue 18: a departed worker's placement series kept its last value; its neighbours
    now zero it. Another TorchServe's workers are not ours to announce."""
    registry, seat = seated(tmp_path)
    heard: list[tuple[int, tuple[int, ...], str]] = []
    seat.on_departure(lambda pid, last: heard.append((pid, last.cpus, last.model)))
    registry.join(11, 1, "b", 99, pool(2))
    registry.join(12, 1, "c", 77, pool(2))  # another TorchServe (frontend 77)
    seat.refresh()
    sitting = {e.pid: e.cpus for e in registry.read().entries}
    registry.leave((11, 1))
    registry.leave((12, 1))
    seat.refresh()
    seat.refresh()  # once only
    assert heard == [(11, sitting[11], "b")]
