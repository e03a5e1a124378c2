"""Which processes are TorchServe's: its Java frontend (and the config it was started with),
its Python workers, with or without TorchServe's run_cpu wrapper in between."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from torchserve_cpu.launcher.host import SysRoot, cmdline, parent_pid, pids

FRONTEND_CLASS = "org.pytorch.serve.ModelServer"
WORKER_SCRIPT = "model_service_worker.py"
RUN_CPU_MODULE = "torch.backends.xeon.run_cpu"  # TorchServe's wrapper around a worker


@dataclass(frozen=True)
class Frontend:
    """A TorchServe Java frontend: where its config is (ts/model_server.py passes -f)."""

    pid: int
    config: Path | None  # -f, resolved against the frontend's cwd
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
    """The frontend's -f (--ts-config-file), resolved against its cwd as Java would."""
    cwd = _cwd(pid, fs)
    after = list(args)[list(args).index(FRONTEND_CLASS) + 1 :]
    config = next((Path(value) for flag, value in zip(after, after[1:], strict=False)
                   if flag in ("-f", "--ts-config-file") and not value.startswith("-")), None)
    if config is not None and not config.is_absolute() and cwd is not None:
        config = cwd / config
    return Frontend(pid, config, cwd)


def _cwd(pid: int, fs: SysRoot) -> Path | None:
    return fs.readlink(f"proc/{pid}/cwd")


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
