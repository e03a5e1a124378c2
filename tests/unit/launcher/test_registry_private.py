"""The registry is its user's alone: another user's file or directory is refused with its
path and owner, and a held lock ends a worker's start with a message, not a hang."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from torchserve_cpu.launcher.errors import LauncherError
from torchserve_cpu.launcher.torchserve.registry import FILE_NAME, Registry, foreign

from .test_registry import machine, pool

ME = os.getuid()
NOBODY = 65534
FILE = stat.S_IFREG
DIR = stat.S_IFDIR


@pytest.mark.parametrize(("uid", "mode", "expected"), [
    (ME, FILE | 0o600, None),
    (ME, DIR | 0o700, None),
    (ME, DIR | 0o755, None),  # readable is fine: only writers can move seats
    (NOBODY, FILE | 0o600, "is owned by "),
    (ME, FILE | 0o666, "can be written by other users (mode 666)"),
    (ME, DIR | 0o770, "can be written by other users (mode 770)"),
    (ME, stat.S_IFLNK | 0o777, "is a symbolic link"),
])
def test_foreign(uid: int, mode: int, expected: str | None) -> None:
    problem = foreign(Path("/dev/shm/x/reg.json"), uid, mode, ME)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem and "/dev/shm/x/reg.json" in problem
        assert "TSCPU_REGISTRY_DIR" in problem  # the way to share on purpose


def test_a_private_directory_is_made_0700_and_files_0600(tmp_path: Path) -> None:
    directory = tmp_path / "own"
    registry = Registry(machine(2), directory, alive=lambda pid, started: True, private=True)
    registry.join(10, 1, "a", 99, pool(2))
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / FILE_NAME).stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / FILE_NAME).with_suffix(".lock").stat().st_mode) == 0o600


@pytest.mark.skipif(os.getuid() != 0, reason="chown to another user needs root (CI runs as root)")
@pytest.mark.parametrize("what", ["directory", "file"])
def test_another_users_registry_is_refused_with_path_and_owner(tmp_path: Path, what: str) -> None:
    directory = tmp_path / "own"
    Registry(machine(2), directory, alive=lambda pid, started: True,
             private=True).join(10, 1, "a", 99, pool(2))
    target = directory if what == "directory" else directory / FILE_NAME
    os.chown(target, NOBODY, -1)
    with pytest.raises(LauncherError, match=f"{target} is owned by nobody"):
        Registry(machine(2), directory, private=True)


def test_a_held_lock_ends_the_join_with_a_message_within_the_bound(tmp_path: Path) -> None:
    registry = Registry(machine(2), tmp_path, alive=lambda pid, started: True, lock_wait=0.5)
    lock = registry.path.with_suffix(".lock")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; "
         f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
         "print('held', flush=True); time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(LauncherError, match=f"{lock} has been held by another process"):
            registry.join(10, 1, "a", 99, pool(2))
        assert 0.5 <= time.monotonic() - started < 5
    finally:
        holder.kill()
        holder.wait()
    assert registry.join(10, 1, "a", 99, pool(2)).cpus == (0, 1)  # released: it works again
