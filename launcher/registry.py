"""Host-wide record of which worker holds which block of a plan.

One JSON file per plan (keyed by Plan.key()) in /dev/shm, guarded by an exclusive
flock on a side file, so workers of every model, started at the same instant by
TorchServe, each get a different block. A claim names the pid and its start time:
a dead worker's block (or a pid reused by another process) is free again, so a
restarted or scaled-up worker reclaims it without restarting the others.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from launcher.errors import LauncherError
from launcher.procfs import is_alive

REGISTRY_ENV = "TSCPU_REGISTRY_DIR"


def default_directory() -> Path:
    """$TSCPU_REGISTRY_DIR, else /dev/shm (gone at reboot, like the pids), else TMPDIR."""
    chosen = os.environ.get(REGISTRY_ENV)
    if chosen:
        return Path(chosen)
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm
    return Path(tempfile.gettempdir())


@dataclass(frozen=True)
class Claim:
    block: int
    pid: int
    started: int
    model: str
    cpus: tuple[int, ...] = ()  # recorded so `doctor` can compare with what the OS shows


class Registry:
    """Claims on the blocks of one plan; `layout` is each block's CPUs."""

    def __init__(
        self,
        plan_key: str,
        layout: Sequence[Sequence[int]],
        directory: Path | None = None,
        alive: Callable[[int, int], bool] = is_alive,
    ) -> None:
        self.layout = [tuple(cpus) for cpus in layout]
        self.blocks = len(self.layout)
        self.path = (directory or default_directory()) / f"torchserve-cpu-{plan_key}.json"
        self._alive = alive

    @contextmanager
    def _locked(self) -> Iterator[list[Claim]]:
        """Live claims under the lock; the list as left by the body is written back."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_suffix(".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            claims = [c for c in self._load() if self._alive(c.pid, c.started)]
            yield claims
            self._store(claims)
        finally:
            os.close(fd)  # closing releases the flock

    def _load(self) -> list[Claim]:
        try:
            entries = json.loads(self.path.read_text()).get("claims", [])
            return [Claim(**{**entry, "cpus": tuple(entry.get("cpus", ()))}) for entry in entries]
        except (OSError, ValueError, TypeError, AttributeError):
            return []  # missing or torn file: treat as empty, liveness is rechecked anyway

    def _store(self, claims: list[Claim]) -> None:
        data = {"claims": [asdict(c) for c in claims]}
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".claims-")
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
        os.chmod(temporary, 0o666)
        os.replace(temporary, self.path)

    def claim(self, pid: int, started: int, model: str) -> int:
        """The block index this process holds: its existing claim, else the first free."""
        with self._locked() as claims:
            for existing in claims:
                if existing.pid == pid and existing.started == started:
                    return existing.block
            held = {c.block for c in claims}
            free = [index for index in range(self.blocks) if index not in held]
            if not free:
                holders = ", ".join(f"block {c.block}: pid {c.pid} ({c.model})" for c in claims)
                raise LauncherError(
                    f"no free core block for a worker of {model!r}: all {self.blocks} blocks "
                    f"are held by live workers ({holders}); raise default_workers_per_model / "
                    "minWorkers, or reserve slots with --ninstances in cpu_launcher_args"
                )
            claims.append(Claim(free[0], pid, started, model, self.layout[free[0]]))
            return free[0]

    def release(self, pid: int) -> None:
        with self._locked() as claims:
            claims[:] = [c for c in claims if c.pid != pid]

    def claims(self) -> list[Claim]:
        with self._locked() as claims:
            return list(claims)


def all_claims(directory: Path | None = None) -> list[Claim]:
    """Live claims of every plan's registry in the directory (for `doctor`)."""
    found: list[Claim] = []
    for path in sorted((directory or default_directory()).glob("torchserve-cpu-*.json")):
        key = path.stem.removeprefix("torchserve-cpu-")
        found.extend(Registry(key, [], path.parent).claims())
    return found
