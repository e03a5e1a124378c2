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
from torchserve_cpu.launcher.options import Allocator, LauncherOptions

log = logging.getLogger(__name__)

# Measured on the development machine (ResNet-50-shaped net, batch 1, one thread):
# run_cpu's "oversize_threshold:1,background_thread:true,metadata_thp:auto" gave ~15k
# minor page faults per inference, jemalloc's defaults ~9k, and any finite decay
# still ~9k; with decay disabled jemalloc keeps freed pages: 0 faults per inference,
# as fast as tcmalloc. A worker's footprint then stays at its peak, which is what a
# dedicated inference process wants. Benchmarks report this string.
JEMALLOC_MALLOC_CONF = "metadata_thp:auto,dirty_decay_ms:-1,muzzy_decay_ms:-1"
RUN_CPU_JEMALLOC_MALLOC_CONF = "oversize_threshold:1,background_thread:true,metadata_thp:auto"

# Debian/Ubuntu put libraries under the multiarch folder, which run_cpu never
# searches (it looks for an unversioned libjemalloc.so under /usr/lib).
LIBRARY_DIRS = (
    Path(f"/usr/lib/{platform.machine()}-linux-gnu"),
    Path("/usr/lib64"),
    Path("/usr/lib"),
    Path("/usr/local/lib"),
    Path(sys.prefix) / "lib",
)
LIBRARY_NAMES: dict[str, tuple[str, ...]] = {
    "tcmalloc": ("libtcmalloc.so.4", "libtcmalloc_minimal.so.4", "libtcmalloc.so"),
    "jemalloc": ("libjemalloc.so.2", "libjemalloc.so"),
    "iomp": ("libiomp5.so",),
}
FLAG_OF: dict[str, str] = {"tcmalloc": "--enable_tcmalloc", "jemalloc": "--enable_jemalloc"}

Finder = Callable[[str], "Path | None"]


def find_library(kind: str, dirs: Sequence[Path] = LIBRARY_DIRS) -> Path | None:
    """The first existing file for a library kind ("tcmalloc", "jemalloc", "iomp")."""
    for directory in dirs:
        for name in LIBRARY_NAMES[kind]:
            candidate = directory / name
            if candidate.exists():
                return candidate
    return None


@dataclass(frozen=True)
class AllocatorChoice:
    """The allocator to preload (path None for glibc) and why it was chosen."""

    name: Allocator
    path: Path | None
    reason: str


def choose_allocator(options: LauncherOptions, find: Finder = find_library) -> AllocatorChoice:
    """tcmalloc unless told otherwise: it measured fastest here (issue 3: 17.1 req/s vs
    15.7 glibc vs 13.0 jemalloc under run_cpu's MALLOC_CONF). An allocator asked for by
    flag but not installed is an error naming the flag; the default falls back."""
    if options.allocator == "glibc":
        return AllocatorChoice("glibc", None, "--use_default_allocator")
    if options.allocator is not None:
        path = find(options.allocator)
        if path is None:
            raise LauncherError(
                f"{FLAG_OF[options.allocator]}: lib{options.allocator} not found in "
                f"{', '.join(map(str, LIBRARY_DIRS))}; install it (Debian: "
                f"{'libjemalloc2' if options.allocator == 'jemalloc' else 'libgoogle-perftools4'})"
            )
        return AllocatorChoice(options.allocator, path, FLAG_OF[options.allocator])
    path = find("tcmalloc")
    if path is None:
        return AllocatorChoice("glibc", None, "default tcmalloc is not installed: using glibc")
    return AllocatorChoice("tcmalloc", path, "default (measured fastest)")


def process_env(
    options: LauncherOptions,
    allocator: AllocatorChoice,
    base: Mapping[str, str],
    find: Finder = find_library,
    machine: str | None = None,
) -> dict[str, str]:
    """Variables to add to TorchServe's environment (inherited by every worker)."""
    env = late_env(options, machine)  # THP: PyTorch madvises big CPU tensors
    preload = [str(allocator.path)] if allocator.path else []
    iomp = find("iomp") if options.use_iomp else None
    if iomp is not None:
        preload.append(str(iomp))
        env.update(iomp_env())
    if preload:
        existing = [p for p in base.get("LD_PRELOAD", "").split(":") if p and p not in preload]
        env["LD_PRELOAD"] = ":".join(preload + existing)
    if allocator.name == "jemalloc":
        env["MALLOC_CONF"] = JEMALLOC_MALLOC_CONF
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
    """Make lib<name>.so links to the installed tcmalloc/jemalloc in `directory`.

    run_cpu (torch.backends.xeon.run_cpu) preloads only an unversioned lib<name>.so
    from a few fixed folders, none of them Debian's multiarch one; without a link the
    workers TorchServe wraps in it silently run on glibc malloc. Returns what was done.
    """
    done = []
    for kind in ("tcmalloc", "jemalloc"):
        target = find(kind)
        link = directory / f"lib{kind}.so"
        if target is None:
            done.append(f"lib{kind}: not installed, no link")
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
