"""The host-wide record of live TorchServe workers and the seat each one holds.

One JSON file for the whole host (not per plan or per instance), so workers of every
model of every TorchServe instance draw from the same cores. Every change (a worker
joins, leaves, or is found dead) happens under an exclusive flock, recomputes all seats
with `launcher.balance.assign`, and bumps `generation` when any seat moved. Workers
notice a change with one stat() of the file (its inode changes on every write) and
re-apply their seat; see launcher.worker.

A worker is named by (pid, start time): a dead worker's entry, or a pid reused by
another process, is dropped at the next change or sweep.

The file decides where every worker's threads run, so it is the serving user's alone: by
default in `/dev/shm/torchserve-cpu-<uid>/` (mode 0700, files 0600), and a directory or
file that another user owns or can write is refused with its path and owner. Sharing
between users is possible only when asked: `$TSCPU_REGISTRY_DIR` names a directory set up
for it (files 0660 there). The lock is waited for at most `LOCK_WAIT_S`.
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from torchserve_cpu.launcher.errors import LauncherError
from torchserve_cpu.launcher.host import Topology, format_cpulist, is_alive
from torchserve_cpu.launcher.planning import Demand, Pool, WorkerKey, assign

REGISTRY_ENV = "TSCPU_REGISTRY_DIR"
FILE_NAME = "torchserve-cpu-registry.json"
#: a worker's start fails after this long, naming the lock, instead of hanging: the lock is
#: held for milliseconds by a worker joining or leaving
LOCK_WAIT_S = 10.0


def default_directory() -> Path:
    """$TSCPU_REGISTRY_DIR (shared as set up), else this user's own directory in /dev/shm
    (gone at reboot, like the pids), else in TMPDIR."""
    chosen = os.environ.get(REGISTRY_ENV)
    if chosen:
        return Path(chosen)
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    return base / f"torchserve-cpu-{os.getuid()}"


def owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def foreign(path: Path, st_uid: int, st_mode: int, uid: int) -> str | None:
    """Why a registry path is not this user's alone (None: it is). Decided from stat data."""
    fix = (f"remove it, or set {REGISTRY_ENV} to a directory shared on purpose")
    if stat.S_ISLNK(st_mode):
        return f"registry: {path} is a symbolic link; {fix}"
    if st_uid != uid:
        return (f"registry: {path} is owned by {owner_name(st_uid)}, not by this user "
                f"({owner_name(uid)}): another user could move every worker's threads; {fix}")
    if st_mode & 0o022:
        return (f"registry: {path} can be written by other users (mode "
                f"{stat.S_IMODE(st_mode):o}); {fix}")
    return None


def check_private(directory: Path) -> None:
    """Make this user's registry directory (0700) or refuse one that is not theirs alone."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path in (directory, directory / FILE_NAME, (directory / FILE_NAME).with_suffix(".lock")):
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        problem = foreign(path, info.st_uid, info.st_mode, os.getuid())
        if problem:
            raise LauncherError(problem)


@dataclass(frozen=True)
class Entry:
    """One live worker: who it is, its instance's pool, and the seat it was given."""

    pid: int
    started: int
    model: str
    frontend: int
    seq: int
    pool: Pool
    cpus: tuple[int, ...] = ()
    node: int | None = None
    threads: int = 0
    shared_with: tuple[int, ...] = ()  # pids of workers on the same cores
    applied_threads: int | None = None  # what the worker last applied; != threads: pending
    home: tuple[int, ...] = ()  # the CPUs it was first seated on

    @property
    def key(self) -> WorkerKey:
        return (self.pid, self.started)

    @staticmethod
    def from_dict(data: dict) -> Entry:
        pool = data["pool"]
        return Entry(
            **{
                **data,
                "pool": Pool(tuple(pool["cpus"]), pool["quota"], pool["args"]),
                "cpus": tuple(data["cpus"]),
                "shared_with": tuple(data["shared_with"]),
                "home": tuple(data.get("home", ())),
            }
        )


@dataclass(frozen=True)
class State:
    generation: int = 0
    next_seq: int = 0
    entries: tuple[Entry, ...] = ()
    notes: tuple[str, ...] = field(default=(), compare=False)

    def find(self, key: WorkerKey) -> Entry | None:
        return next((e for e in self.entries if e.key == key), None)


@dataclass
class _Change:
    stored: State
    state: State


class Registry:
    """The registry file in `directory`; `machine` is the host's whole topology."""

    def __init__(
        self,
        machine: Topology,
        directory: Path | None = None,
        alive: Callable[[int, int], bool] = is_alive,
        private: bool | None = None,
        lock_wait: float = LOCK_WAIT_S,
    ) -> None:
        """`private`: checked to be this user's alone (default: when the directory is the
        default one, not $TSCPU_REGISTRY_DIR's nor a caller's)."""
        self.machine = machine
        if private is None:
            private = directory is None and not os.environ.get(REGISTRY_ENV)
        directory = directory or default_directory()
        if private:
            check_private(directory)
        self.path = directory / FILE_NAME
        self.mode = 0o600 if private else 0o660
        self._alive = alive
        self._lock_wait = lock_wait

    # -- reading (no lock: writes replace the file atomically) ---------------------------

    def stamp(self) -> tuple[int, int] | None:
        """Changes whenever the file is rewritten: the per-batch check is this one stat()."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (info.st_ino, info.st_mtime_ns)

    def read(self) -> State:
        return read_state(self.path)

    # -- changes (under the lock) ---------------------------------------------------------

    def join(self, pid: int, started: int, model: str, frontend: int, pool: Pool,
             allow_sharing: bool = True) -> Entry:
        """Add this worker (or find it again) and re-seat everyone; its entry.

        With allow_sharing False, a worker that would have to share cores is refused
        with a LauncherError naming the counts, and nothing changes for the others.
        """
        with self._locked() as change:
            found = change.state.find((pid, started))
            if found is not None:
                return found
            state = change.state
            newcomer = Entry(pid, started, model, frontend, state.next_seq, pool)
            after = _reseat(self.machine, state, (*state.entries, newcomer), state.next_seq + 1)
            entry = after.find(newcomer.key)
            if entry is None:  # _reseat keeps every live entry it is given
                raise RuntimeError(f"registry: re-seating lost the new worker pid {pid}")
            if entry.shared_with and not allow_sharing:
                live = [e for e in state.entries if e.pool == pool]
                raise LauncherError(
                    f"no free core block for a worker of {model!r}: {len(live) + 1} workers "
                    f"would need more blocks than the {len(pool.cpus)} allowed CPUs "
                    f"({format_cpulist(pool.cpus)}, cpu_launcher_args {pool.args!r}) hold "
                    "apart; lower min_worker or allow sharing (drop --oversubscribe refuse)"
                )
            change.state = after
            return entry

    def leave(self, key: WorkerKey) -> None:
        with self._locked() as change:
            rest = tuple(e for e in change.state.entries if e.key != key)
            if len(rest) != len(change.state.entries):
                change.state = _reseat(self.machine, change.state, rest, change.state.next_seq)

    def sweep(self) -> bool:
        """Drop workers that have exited; True when that moved anyone's seat."""
        with self._locked() as change:  # opening the change drops the dead
            return change.state.generation != change.stored.generation

    def record_applied(self, key: WorkerKey, threads: int) -> None:
        """The worker now runs with `threads` intra-op threads (for `doctor`)."""
        with self._locked() as change:
            entries = tuple(
                replace(e, applied_threads=threads) if e.key == key else e
                for e in change.state.entries
            )
            change.state = replace(change.state, entries=entries)

    @contextmanager
    def _locked(self) -> Iterator[_Change]:
        """A change under the flock, starting from the stored state with dead workers
        dropped (and the rest re-seated); written back only if it differs."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_suffix(".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, self.mode)
        try:
            self._wait_for(fd, lock)
            stored = self.read()
            live = tuple(e for e in stored.entries if self._alive(e.pid, e.started))
            state = stored
            if len(live) != len(stored.entries):
                state = _reseat(self.machine, stored, live, stored.next_seq)
            change = _Change(stored, state)
            yield change
            if change.state != stored:
                self._store(change.state)
        finally:
            os.close(fd)  # closing releases the flock

    def _store(self, state: State) -> None:
        data = {
            "generation": state.generation,
            "next_seq": state.next_seq,
            "entries": [asdict(e) for e in state.entries],
            "notes": list(state.notes),
        }
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".registry-")
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
        os.chmod(temporary, self.mode)
        os.replace(temporary, self.path)

    def _wait_for(self, fd: int, lock: Path) -> None:
        deadline = time.monotonic() + self._lock_wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LauncherError(
                        f"registry: {lock} has been held by another process for "
                        f"{self._lock_wait:g} s (a stopped or hung worker? `fuser {lock}` "
                        "names it); this worker cannot take a seat until it is released"
                    ) from None
                time.sleep(0.01)


def _reseat(machine: Topology, before: State, entries: tuple[Entry, ...], next_seq: int) -> State:
    """Seats for `entries` from balance.assign; generation + 1 when any seat changed."""
    demands = [Demand(e.key, e.model, e.pool, e.seq, e.cpus, e.home) for e in entries]
    assignment = assign(machine, demands)
    pid_of = {e.key: e.pid for e in entries}
    seated = []
    for e in entries:
        seat = assignment.seats[e.key]
        seated.append(
            replace(
                e,
                cpus=seat.block.cpus,
                node=seat.block.node,
                threads=seat.threads,
                shared_with=tuple(pid_of[k] for k in seat.shared_with),
                home=e.home or seat.block.cpus,
            )
        )
    changed = [e.key for e in seated] != [e.key for e in before.entries] or any(
        (a.cpus, a.threads) != (b.cpus, b.threads)
        for a, b in zip(seated, before.entries, strict=False)
    )
    return State(
        generation=before.generation + (1 if changed else 0),
        next_seq=next_seq,
        entries=tuple(seated),
        notes=assignment.notes,
    )


def sharing_note(me: Entry, entries: tuple[Entry, ...]) -> str | None:
    """Who else sits on this worker's cores, by model and TorchServe instance, with the fix
    that can help: more workers than blocks in this instance, or another instance here."""
    others = [e for e in entries if e.pid in me.shared_with]
    if not others:
        return None
    mine = [f"{e.model} worker {e.pid}" for e in others if e.frontend == me.frontend]
    theirs = [f"{e.model} worker {e.pid} of the TorchServe with pid {e.frontend}"
              for e in others if e.frontend != me.frontend]
    who = ", ".join([*(f"{name} (this TorchServe)" for name in mine), *theirs])
    if theirs:
        fix = ("another TorchServe on this host draws from the same cores: give each its own "
               "CPUs (a cpuset or taskset per instance), or fewer workers in total")
    else:
        fix = ("this TorchServe has more workers than core blocks: lower minWorkers / "
               "default_workers_per_model, or give it more CPUs")
    return f"{me.model} worker {me.pid} shares cores {format_cpulist(me.cpus)} with {who}: {fix}"


def read_state(path: Path) -> State:
    """The registry file's state; empty when it is missing or foreign (start afresh:
    liveness is rechecked)."""
    try:
        data = json.loads(path.read_text())
        return State(
            generation=int(data["generation"]),
            next_seq=int(data["next_seq"]),
            entries=tuple(Entry.from_dict(e) for e in data["entries"]),
            notes=tuple(data.get("notes", ())),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return State()


def read_entries(directory: Path | None = None) -> tuple[Entry, ...]:
    """Live workers as last recorded (for `doctor`); exited ones are left out. The default
    directory is checked as a worker checks it: a foreign registry is not believed."""
    if directory is None and not os.environ.get(REGISTRY_ENV):
        check_private(default_directory())
    entries = read_state((directory or default_directory()) / FILE_NAME).entries
    return tuple(e for e in entries if is_alive(e.pid, e.started))
