"""pin_current_worker: the handler's first call in `initialize`; then it follows re-balances.

A worker finds the config TorchServe was started with, joins the host-wide registry as
one unit of demand (no config entry needed: a model registered later through the
management API is demand like any other), and sits on the seat the registry gives it,
before any weight is loaded. When demand changes (a worker joins, is scaled away,
crashes) the registry re-seats everyone; each running worker then moves without a
restart:
- a watcher thread notices within WATCH_INTERVAL (or at once when a worker it watches
  exits: pidfds) and re-pins the affinity of every thread of the process, so an idle
  worker never sits on another's cores;
- the thread that runs inference re-applies what only it can change (OpenMP's thread
  count is per thread; so is set_mempolicy) in `refresh()` before each batch, whose
  cost when nothing changed is one stat() of the registry file;
- a change found by the watcher while that thread is busy elsewhere (loading the model:
  workers started together re-seat each other within milliseconds) is handed to it with
  a signal (NUDGE_SIGNAL), whose Python handler runs `refresh()` on it at once: loads ran
  with 2 OpenMP threads spinning on 1 core until the first batch, 211 s instead of 2.
"""

from __future__ import annotations

import atexit
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from torchserve_cpu.launcher.errors import LauncherError
from torchserve_cpu.launcher.host import (
    SysRoot,
    allowed_topology,
    format_cpulist,
    iomp_loaded,
    nodes_with_memory,
    parent_pid,
    read_topology,
)
from torchserve_cpu.launcher.host import start_time as process_start_time
from torchserve_cpu.launcher.planning import (
    PRELOAD_FIX,
    LauncherOptions,
    Pool,
    WorkerKey,
    choose_allocator,
    late_env,
    mapped_allocator,
    worker_env,
)
from torchserve_cpu.launcher.torchserve import apply
from torchserve_cpu.launcher.torchserve.processes import frontend_of
from torchserve_cpu.launcher.torchserve.registry import Entry, Registry, sharing_note
from torchserve_cpu.launcher.torchserve.tsconfig import CONFIG_ENV, find_config, read_ts_config

log = logging.getLogger(__name__)

#: the watcher's call to the inference (main) thread: re-apply the seat now
NUDGE_SIGNAL = signal.SIGUSR2
WATCH_INTERVAL = 0.1  # seconds between the watcher's stat() of the registry
SWEEP_INTERVAL = 2.0  # seconds between liveness sweeps when no pidfd is available


@dataclass(frozen=True)
class WorkerPlacement:
    """Where this worker runs, as applied (allocator as mapped, not as asked)."""

    model: str
    cpus: tuple[int, ...]
    node: int | None
    threads: int
    allocator: str
    memory_policy: str
    shared_with: tuple[int, ...] = ()
    allocator_note: str = ""  # why the mapped allocator differs from the one asked for

    def describe(self) -> str:
        """One log line: what a reader of model_log.log needs to check the pinning."""
        node = "-" if self.node is None else str(self.node)
        text = (
            f"cores={format_cpulist(self.cpus)} node={node} threads={self.threads} "
            f"allocator={self.allocator}"
        )
        if self.allocator_note:
            text += f" ({self.allocator_note})"
        if self.shared_with:
            text += f" SHARED with pids {','.join(map(str, self.shared_with))}"
        return text


@dataclass(frozen=True)
class SeatChange:
    """What taking a seat asks of this worker, decided from data alone (`seat_change`)."""

    repin: bool  # its CPUs changed: pin its threads there
    rethread: bool  # threads, node or first seat changed: bind memory, set thread counts
    moved: bool  # it sat elsewhere before: a re-balance worth a log line


def seat_change(applied: Entry, threads_applied: int, seat: Entry,
                inference_thread: bool) -> SeatChange:
    """Compare the seat applied so far with the registry's. Thread counts change only on
    the inference thread: torch's thread pools are per thread and the watcher's are not
    the ones that run the model."""
    cpus_changed = seat.cpus != applied.cpus
    rethread = inference_thread and (threads_applied != seat.threads
                                     or seat.node != applied.node or not applied.cpus)
    return SeatChange(repin=cpus_changed, rethread=rethread,
                      moved=cpus_changed and bool(applied.cpus))


class PinnedWorker:
    """This process's seat in the registry, kept applied as the registry changes."""

    def __init__(
        self,
        registry: Registry,
        entry: Entry,
        options: LauncherOptions,
        fs: SysRoot,
        allocator_note: str,
    ) -> None:
        self.registry = registry
        self.key = entry.key
        self.model = entry.model
        self.options = options
        self._fs = fs
        self._allocator_note = allocator_note
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._entry = replace(entry, cpus=(), node=None, threads=0)  # nothing applied yet
        self._threads_applied = 0
        self._memory = "not bound"
        self._listeners: list[Callable[[WorkerPlacement], None]] = []
        self._departure_listeners: list[Callable[[int, WorkerPlacement], None]] = []
        self._departed_seen: set[WorkerKey] = set()
        # TorchServe stops a worker by killing its parent (with its launcher on, run_cpu's
        # python): once re-parented, this worker is winding down and must not rejoin
        self._parent = os.getppid()
        self.placement: WorkerPlacement
        self._nudges = False
        # read the seat back from the file, not `entry`: a worker that joined after this
        # one's join returned has already moved it, and that write is in the stamp
        self._sync(inference_thread=True)
        self._nudges = self._install_nudge()

    # -- the inference thread ----------------------------------------------------------

    def refresh(self) -> None:
        """Before each batch: apply a re-balance if there was one (one stat() if not)."""
        if self.registry.stamp() == self._stamp and self._threads_applied == self._entry.threads:
            return
        self._sync(inference_thread=True)

    # -- both threads ------------------------------------------------------------------

    def _install_nudge(self) -> bool:
        """Let the watcher reach the inference thread (this one, the main thread) between
        two of its Python steps; False where the signal is someone else's."""
        if threading.current_thread() is not threading.main_thread():
            return False
        current = signal.getsignal(NUDGE_SIGNAL)
        ours = isinstance(getattr(current, "__self__", None), PinnedWorker)
        if current not in (signal.SIG_DFL, None) and not ours:
            log.info("launcher: %s has a handler already: re-balances found while loading "
                     "wait for the first batch", NUDGE_SIGNAL.name)
            return False
        signal.signal(NUDGE_SIGNAL, self._on_nudge)
        return True

    def _on_nudge(self, signum: int, frame: object) -> None:
        # The lock taken means the inference thread was interrupted holding it (it would
        # wait for itself) or the watcher is in a _sync that nudges again if still needed.
        if not self._lock.acquire(blocking=False):
            return
        self._lock.release()
        try:
            before = self._threads_applied
            self.refresh()
            if self._threads_applied != before:
                log.info("launcher: %s worker %d applied its re-balance between two steps: "
                         "threads %d -> %d", self.model, self.key[0], before,
                         self._threads_applied)
        except Exception:  # raised here it would surface in whatever the thread was doing
            log.exception("launcher: applying a re-balance while loading")

    def _sync(self, inference_thread: bool) -> None:
        """Follow the registry: read this worker's seat, decide what changed, apply it."""
        with self._lock:
            self._stamp = self.registry.stamp()  # before reading: a later write is seen
            state = self.registry.read()
            entry = state.find(self.key)
            if entry is None and os.getppid() != self._parent:
                return  # swept while TorchServe stops this worker: keep out of the way
            if entry is None:  # the file was removed or we were swept by mistake: rejoin
                entry = self.registry.join(*self.key, self.model, self._entry.frontend,
                                           self._entry.pool)
            change = seat_change(self._entry, self._threads_applied, entry, inference_thread)
            self._apply(change, entry)
            self._announce_departures(state.departed)
            pending = self._threads_applied != entry.threads  # left to the inference thread
        if change.rethread:
            # Our own write changes the stamp too, and is left to look like a change (one
            # more read): a stamp taken after it may already be another worker's write,
            # which would then never be followed (seen: a worker stuck on 1 of 2 cores).
            self.registry.record_applied(self.key, self._threads_applied,
                                         self.placement.allocator)
        note = sharing_note(entry, state.entries)
        if note:
            log.warning("launcher: %s", note)
        if pending and not inference_thread and self._nudges:
            os.kill(os.getpid(), NUDGE_SIGNAL)

    def _apply(self, change: SeatChange, entry: Entry) -> None:
        """Every side effect of taking `entry` (called under the lock)."""
        if change.repin and self.options.bind_cpus:
            apply.pin_threads(entry.cpus, self._fs)
        if change.moved:
            log.info("launcher: %s worker %d re-balanced: cores %s -> %s, threads %d -> %d",
                     self.model, self.key[0], format_cpulist(self._entry.cpus),
                     format_cpulist(entry.cpus), self._entry.threads, entry.threads)
        if change.rethread:
            self._memory = self._bind(entry.node)
            apply.set_environ(worker_env(entry.threads, iomp_loaded("self", self._fs)))
            self._threads_applied = apply.set_torch_threads(entry.threads) or entry.threads
        self._entry = entry
        previous = getattr(self, "placement", None)
        self.placement = WorkerPlacement(
            model=self.model,
            cpus=entry.cpus,
            node=entry.node,
            # the threads its batches run with: a seat moved while idle applies its count
            # before the next batch, so the placement (and its metric) shows it now
            threads=self._threads_applied if change.rethread else entry.threads,
            allocator=mapped_allocator("self", self._fs) or "unknown",
            memory_policy=self._memory,
            shared_with=entry.shared_with,
            allocator_note=self._allocator_note,
        )
        if self.placement != previous:  # under the lock: listeners hear changes in order
            for listener in self._listeners:
                listener(self.placement)

    def _announce_departures(self, departed: tuple[Entry, ...]) -> None:
        """Tell listeners, once each, of workers of this TorchServe that left or died, as
        they last sat (their metric series outlive them otherwise). Under the lock."""
        for gone in departed:
            if gone.frontend != self._entry.frontend or gone.key in self._departed_seen:
                continue
            self._departed_seen.add(gone.key)
            if gone.key == self.key:
                continue
            last = WorkerPlacement(model=gone.model, cpus=gone.cpus, node=gone.node,
                                   threads=0, allocator=gone.allocator or "unknown",
                                   memory_policy="")
            for listener in self._departure_listeners:
                listener(gone.pid, last)

    def on_departure(self, listener: Callable[[int, WorkerPlacement], None]) -> None:
        """Call `listener(pid, last placement)` for every worker of this TorchServe that
        leaves or dies from now on (workers that left earlier were someone else's to tell)."""
        with self._lock:
            self._departure_listeners.append(listener)

    def _bind(self, node: int | None) -> str:
        if not self.options.bind_memory:
            return "not bound (--disable_numactl)"
        if node is None:
            return "not bound (block spans nodes or node unknown)"
        with_memory = nodes_with_memory(self._fs)
        if with_memory is not None and node not in with_memory:
            return f"not bound (node {node} has no memory)"
        problem = apply.bind_memory(node)
        if problem:
            log.warning("launcher: %s; memory policy left as is", problem)
            return f"not bound ({problem})"
        return f"bound to node {node}"

    def on_placement(self, listener: Callable[[WorkerPlacement], None]) -> None:
        """Call `listener` with the placement now and after every change, from whichever
        thread made it (the watcher re-pins an idle worker, `refresh` applies threads)."""
        with self._lock:
            self._listeners.append(listener)
            listener(self.placement)

    # -- the watcher thread ------------------------------------------------------------

    def start_watching(self) -> threading.Thread:
        thread = threading.Thread(target=self._watch, name="tscpu-rebalance", daemon=True)
        thread.start()
        return thread

    def _watch(self) -> None:
        """Re-pin an idle worker's threads and notice exits of the other workers."""
        watched: dict[int, int] = {}  # pid -> pidfd
        _watch_pids(watched, {e.pid for e in self.registry.read().entries} - {self.key[0]})
        last_sweep = time.monotonic()
        while True:
            try:
                exited = _wait_for_exit(watched, WATCH_INTERVAL)
                if exited or time.monotonic() - last_sweep > SWEEP_INTERVAL:
                    self.registry.sweep()
                    last_sweep = time.monotonic()
                if self.registry.stamp() != self._stamp:
                    self._sync(inference_thread=False)
                    _watch_pids(watched, {e.pid for e in self.registry.read().entries}
                                - {self.key[0]})
            except Exception:  # never let the watcher kill the worker; try again later
                log.exception("launcher: re-balance watcher")
                time.sleep(1.0)

    def leave(self) -> None:
        self.registry.leave(self.key)


def _watch_pids(watched: dict[int, int], pids: set[int]) -> None:
    for pid in set(watched) - pids:
        os.close(watched.pop(pid))
    for pid in pids - set(watched):
        try:
            watched[pid] = os.pidfd_open(pid)
        except (OSError, AttributeError):  # gone already, or no pidfd (kernel < 5.3)
            continue


def _wait_for_exit(watched: dict[int, int], timeout: float) -> bool:
    """Sleep up to `timeout`; True as soon as a watched process exits."""
    if not watched:
        time.sleep(timeout)
        return False
    ready, _, _ = select.select(list(watched.values()), [], [], timeout)
    for fd in ready:
        pid = next(p for p, f in watched.items() if f == fd)
        os.close(watched.pop(pid))
    return bool(ready)


def pin_current_worker(
    model_name: str,
    environ: Mapping[str, str] | None = None,
    sys_root: SysRoot | None = None,
    watch: bool = True,
) -> PinnedWorker | None:
    """Join the registry and sit on this worker's seat; None (logged) when no launcher
    config is in effect. Raises LauncherError, naming the key, flag or counts, when the
    config is wrong or (with --oversubscribe refuse) no disjoint block is left."""
    environ = os.environ if environ is None else environ
    fs = sys_root or SysRoot()
    frontend = frontend_of("self", fs)
    path, source = find_config(environ, frontend)
    if path is None:
        log.info("launcher: no TorchServe config found ($%s, $TS_CONFIG_FILE, -f, "
                 "config.properties in the frontend's cwd): not pinned", CONFIG_ENV)
        return None
    config = read_ts_config(path)
    if not config.launcher_enabled:
        log.info("launcher: cpu_launcher_enable is not true in %s (%s): not pinned", path, source)
        return None
    options = config.options
    owner = frontend.pid if frontend else (parent_pid("self", fs) or os.getpid())
    machine = read_topology(fs)
    allowed = allowed_topology(owner, fs, machine)
    pool = Pool(allowed.cpu_ids, allowed.cpu_quota, options.args)
    registry = Registry(machine)
    started = process_start_time("self", fs) or 0
    entry = registry.join(os.getpid(), started, model_name, owner, pool,
                          allow_sharing=options.oversubscribe == "share")
    if CONFIG_ENV not in environ:  # plain `torchserve --start`: what serve would have set
        apply.set_environ(late_env(options))
    pinned = PinnedWorker(registry, entry, options, fs, _allocator_note(options, fs))
    atexit.register(pinned.leave)
    if watch:
        pinned.start_watching()
    log.info("launcher: %s worker %s (config %s): %s", model_name, os.getpid(), source,
             pinned.placement.describe())
    return pinned


def _allocator_note(options: LauncherOptions, fs: SysRoot) -> str:
    """Why the mapped allocator is not the one the options ask for, with the fix."""
    mapped = mapped_allocator("self", fs)
    try:
        wanted = choose_allocator(options)
    except LauncherError as error:
        return f"asked for but {error}"
    if mapped is None or wanted.name == mapped:
        return ""
    return f"wanted {wanted.name}: it was not preloaded when the worker started; {PRELOAD_FIX}"
