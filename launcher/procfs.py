"""Facts about processes from /proc: parents, start times, TorchServe frontends, maps.

Reads go through `SysRoot` like sysfs.py, so a saved /proc can stand in for tests.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from torchserve_cpu.launcher.allocators import allocator_in
from torchserve_cpu.launcher.sysfs import SysRoot

FRONTEND_CLASS = "org.pytorch.serve.ModelServer"
WORKER_SCRIPT = "model_service_worker.py"
RUN_CPU_MODULE = "torch.backends.xeon.run_cpu"  # TorchServe's wrapper around a worker


def _stat_fields(pid: int | str, fs: SysRoot) -> list[str] | None:
    text = fs.read(f"proc/{pid}/stat")
    if text is None:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ")"
    return text.rsplit(")", 1)[1].split()


def parent_pid(pid: int | str = "self", sys_root: SysRoot | None = None) -> int | None:
    fields = _stat_fields(pid, sys_root or SysRoot())
    return int(fields[1]) if fields else None


def start_time(pid: int | str, sys_root: SysRoot | None = None) -> int | None:
    """Start time in clock ticks since boot (proc(5) field 22): with the pid, it names
    one process even after the pid is reused."""
    fields = _stat_fields(pid, sys_root or SysRoot())
    if not fields or fields[0] in ("Z", "X"):  # a zombie holds no CPUs
        return None
    return int(fields[19])


def is_alive(pid: int, started: int, sys_root: SysRoot | None = None) -> bool:
    """True when `pid` is still the process that started at `started`."""
    return start_time(pid, sys_root) == started


def cmdline(pid: int | str, sys_root: SysRoot | None = None) -> list[str]:
    text = (sys_root or SysRoot()).read(f"proc/{pid}/cmdline")
    return [part for part in (text or "").split("\0") if part]


def pids(sys_root: SysRoot | None = None) -> list[int]:
    return [int(name) for name in (sys_root or SysRoot()).listdir("proc") if name.isdigit()]


@dataclass(frozen=True)
class Frontend:
    """A TorchServe Java frontend and the arguments ts/model_server.py gave it."""

    pid: int
    config: Path | None  # -f, resolved against the frontend's cwd
    model_store: Path | None  # -s
    models: tuple[str, ...]  # -m entries
    cwd: Path | None


def frontend_of(pid: int | str = "self", sys_root: SysRoot | None = None) -> Frontend | None:
    """The TorchServe frontend among a process's ancestors, or None.

    A worker's parent is the frontend, or run_cpu when TorchServe's own launcher wraps
    it, so walk up instead of trusting the direct parent.
    """
    fs = sys_root or SysRoot()
    current = parent_pid(pid, fs)
    while current and current > 1:
        args = cmdline(current, fs)
        if FRONTEND_CLASS in args:
            return parse_frontend(current, args, fs)
        current = parent_pid(current, fs)
    return None


def parse_frontend(pid: int, args: Sequence[str], fs: SysRoot) -> Frontend:
    cwd = _cwd(pid, fs)
    after = list(args[list(args).index(FRONTEND_CLASS) + 1 :])
    values: dict[str, list[str]] = {}
    flag = None
    for arg in after:
        if arg.startswith("-"):
            flag = arg
            values.setdefault(flag, [])
        elif flag is not None:
            values[flag].append(arg)

    def path(*flags: str) -> Path | None:
        for name in flags:
            if values.get(name):
                given = Path(values[name][0])
                return given if given.is_absolute() or cwd is None else cwd / given
        return None

    models = tuple(values.get("-m", []) + values.get("--models", []))
    return Frontend(pid, path("-f", "--ts-config-file"), path("-s", "--model-store"), models, cwd)


def _cwd(pid: int, fs: SysRoot) -> Path | None:
    try:
        return Path((fs.root / f"proc/{pid}/cwd").readlink())
    except OSError:
        return None


def torchserve_workers(sys_root: SysRoot | None = None) -> Iterator[tuple[int, Frontend]]:
    """(pid, frontend) of every running TorchServe Python worker."""
    fs = sys_root or SysRoot()
    for pid in pids(fs):
        args = cmdline(pid, fs)
        # run_cpu names the worker script in its own arguments; the worker is its child
        if RUN_CPU_MODULE not in args and any(arg.endswith(WORKER_SCRIPT) for arg in args):
            frontend = frontend_of(pid, fs)
            if frontend is not None:
                yield pid, frontend


def mapped_allocator(pid: int | str = "self", sys_root: SysRoot | None = None) -> str | None:
    """The malloc actually mapped in the process (an allocators.ALLOCATORS name); None
    when its maps cannot be read (it exited, or belongs to another user)."""
    libraries = mapped_libraries(pid, sys_root)
    return None if libraries is None else allocator_in(libraries)


def mapped_libraries(
    pid: int | str = "self", sys_root: SysRoot | None = None
) -> set[str] | None:
    """File names of the shared objects mapped in a process (from /proc/<pid>/maps)."""
    text = (sys_root or SysRoot()).read(f"proc/{pid}/maps")
    if text is None:
        return None
    return {Path(line.split()[-1]).name for line in text.splitlines() if ".so" in line}


def iomp_loaded(pid: int | str = "self", sys_root: SysRoot | None = None) -> bool:
    return any(name.startswith("libiomp5") for name in mapped_libraries(pid, sys_root) or ())
