"""Environment variables for TorchServe and for each worker, as plain dicts.

Nothing here touches os.environ: `process_env` is what the serve command starts
TorchServe with (the allocator must be preloaded before a worker process starts),
`worker_env` is what a worker sets for its own block.
"""

from __future__ import annotations

import logging
import platform
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from torchserve_cpu.launcher.errors import LauncherError
from torchserve_cpu.launcher.planning.allocators import (
    ALLOCATORS,
    DEFAULT,
    FALLBACK,
    allocator_named,
)
from torchserve_cpu.launcher.planning.options import LauncherOptions

log = logging.getLogger(__name__)

# Debian/Ubuntu put libraries under the multiarch folder, which run_cpu never
# searches (it looks for an unversioned libjemalloc.so under /usr/lib).
LIBRARY_DIRS = (
    Path(f"/usr/lib/{platform.machine()}-linux-gnu"),
    Path("/usr/lib64"),
    Path("/usr/lib"),
    Path("/usr/local/lib"),
    Path(sys.prefix) / "lib",
)
IOMP = "iomp"  # Intel OpenMP: preloaded beside the allocator unless --disable_iomp
LIBRARY_FILES: dict[str, tuple[str, ...]] = {
    **{entry.name: entry.library_files for entry in ALLOCATORS if entry.preloaded},
    IOMP: ("libiomp5.so",),
}

Finder = Callable[[str], "Path | None"]


def find_library(kind: str, dirs: Sequence[Path] = LIBRARY_DIRS) -> Path | None:
    """The first existing file for a library kind (an allocator's name, or "iomp")."""
    for directory in dirs:
        for name in LIBRARY_FILES[kind]:
            candidate = directory / name
            if candidate.exists():
                return candidate
    return None


@dataclass(frozen=True)
class AllocatorChoice:
    """The allocator to preload (path None when nothing is preloaded) and why it was chosen."""

    name: str
    path: Path | None
    reason: str


def choose_allocator(options: LauncherOptions, find: Finder = find_library) -> AllocatorChoice:
    """allocators.DEFAULT unless told otherwise. An allocator asked for by flag but not
    installed is an error naming the flag and the package; the default falls back."""
    if options.allocator is not None:
        asked = allocator_named(options.allocator)
        if not asked.preloaded:
            return AllocatorChoice(asked.name, None, f"--{asked.flag}")
        path = find(asked.name)
        if path is None:
            raise LauncherError(
                f"--{asked.flag}: {asked.name} ({', '.join(asked.library_files)}) not found in "
                f"{', '.join(map(str, LIBRARY_DIRS))}; install it (Debian: "
                f"{asked.debian_package})"
            )
        return AllocatorChoice(asked.name, path, f"--{asked.flag}")
    path = find(DEFAULT)
    if path is None:
        return AllocatorChoice(
            FALLBACK, None, f"default {DEFAULT} is not installed: using {FALLBACK}"
        )
    return AllocatorChoice(DEFAULT, path, "default (measured fastest)")


def process_env(
    options: LauncherOptions,
    choice: AllocatorChoice,
    base: Mapping[str, str],
    find: Finder = find_library,
    machine: str | None = None,
) -> dict[str, str]:
    """Variables to add to TorchServe's environment (inherited by every worker)."""
    env = late_env(options, machine)  # THP: PyTorch madvises big CPU tensors
    preload = [str(choice.path)] if choice.path else []
    iomp = find(IOMP) if options.use_iomp else None
    if iomp is not None:
        preload.append(str(iomp))
        env.update(iomp_env())
    if preload:
        existing = [p for p in base.get("LD_PRELOAD", "").split(":") if p and p not in preload]
        env["LD_PRELOAD"] = ":".join(preload + existing)
    env.update(allocator_named(choice.name).env)
    return env


def iomp_env() -> dict[str, str]:
    """Intel OpenMP settings run_cpu uses; they mean nothing to GNU OpenMP."""
    return {"KMP_AFFINITY": "granularity=fine,compact,1,0", "KMP_BLOCKTIME": "1"}


def arm_env(options: LauncherOptions) -> dict[str, str]:
    """Presets from the PyTorch-on-Graviton tutorial; BF16 fast math is opt-in because
    it changes numerics."""
    env = {"TORCH_MKLDNN_MATMUL_MIN_DIM": "1024", "LRU_CACHE_CAPACITY": "1024"}
    if options.bf16_fpmath:
        env["DNNL_DEFAULT_FPMATH_MODE"] = "BF16"
    return env


def late_env(options: LauncherOptions, machine: str | None = None) -> dict[str, str]:
    """The part of `process_env` a worker can still set for itself when TorchServe was
    started without `launcher serve` (read by torch/oneDNN at first use, not at exec)."""
    env = {"THP_MEM_ALLOC_ENABLE": "1"}
    if (machine or platform.machine()) in ("aarch64", "arm64"):
        env.update(arm_env(options))
    return env


def worker_env(threads: int, iomp_loaded: bool) -> dict[str, str]:
    """Variables one worker sets for its seat (children it starts inherit them)."""
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if iomp_loaded:
        env.update(iomp_env())
    return env


def run_cpu_link_dir(environ: Mapping[str, str]) -> Path:
    """Where TorchServe's run_cpu wrapper will look: it searches $VIRTUAL_ENV/lib only
    when that variable is set (an activated venv), but always ~/.local/lib."""
    if environ.get("VIRTUAL_ENV"):
        return Path(environ["VIRTUAL_ENV"]) / "lib"
    return Path(environ.get("HOME", str(Path.home()))) / ".local" / "lib"


def link_allocators(directory: Path, find: Finder = find_library) -> list[str]:
    """Make the unversioned links run_cpu looks for (libtcmalloc.so, ...) in `directory`.

    run_cpu (torch.backends.xeon.run_cpu) preloads only an unversioned lib<name>.so
    from a few fixed folders, none of them Debian's multiarch one; without a link the
    workers TorchServe wraps in it silently run on glibc malloc. Returns what was done.
    """
    done = []
    for entry in ALLOCATORS:
        if entry.run_cpu_file is None:
            continue
        target = find(entry.name)
        link = directory / entry.run_cpu_file
        if target is None:
            done.append(f"{entry.run_cpu_file}: {entry.name} not installed, no link")
            continue
        if link.resolve() == target.resolve():
            done.append(f"{link} -> {target} (already there)")
            continue
        directory.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            done.append(f"{link}: a real file is already there, left alone")
            continue
        link.symlink_to(target)
        done.append(f"{link} -> {target}")
    return done
