"""The malloc implementations the launcher knows: one entry each, and nowhere else.

Flags (options), library search and environment (environment), detection in
/proc/<pid>/maps (procfs), doctor's hints and link-allocators all read this table, so
adding an allocator is adding one entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from torchserve_cpu.launcher.host import SysRoot, mapped_libraries

# Measured on the development machine (ResNet-50-shaped net, batch 1, one thread):
# run_cpu's "oversize_threshold:1,background_thread:true,metadata_thp:auto" gave ~15k
# minor page faults per inference, jemalloc's defaults ~9k, and any finite decay
# still ~9k; with decay disabled jemalloc keeps freed pages: 0 faults per inference,
# as fast as tcmalloc. A worker's footprint then stays at its peak, which is what a
# dedicated inference process wants. Benchmarks report this string.
JEMALLOC_MALLOC_CONF = "metadata_thp:auto,dirty_decay_ms:-1,muzzy_decay_ms:-1"

# What a worker's log and doctor say when the mapped allocator is not the one asked for.
PRELOAD_FIX = (
    "start TorchServe with `torchserve-cpu serve`, or run `torchserve-cpu "
    "link-allocators` so TorchServe's run_cpu wrapper finds it"
)


@dataclass(frozen=True)
class Allocator:
    """One malloc: how a user asks for it, where it is found, how it shows in a process."""

    name: str
    flag: str  # the cpu_launcher_args flag (run_cpu's) that chooses it, without "--"
    library_files: tuple[str, ...]  # searched in this order; () = libc's own, nothing to preload
    debian_package: str | None  # named in the error when it is asked for but missing
    run_cpu_file: str | None  # the unversioned name run_cpu preloads (link-allocators makes it)
    mapped_prefix: str | None  # a file in /proc/<pid>/maps starting with this means it is in use
    env: Mapping[str, str] = field(default_factory=dict, hash=False)  # read when it starts

    @property
    def preloaded(self) -> bool:
        """True when using it means putting a library in LD_PRELOAD."""
        return bool(self.library_files)


# Order matters only for detection: the first entry whose library is mapped wins.
ALLOCATORS: tuple[Allocator, ...] = (
    Allocator(
        name="jemalloc",
        flag="enable_jemalloc",
        library_files=("libjemalloc.so.2", "libjemalloc.so"),
        debian_package="libjemalloc2",
        run_cpu_file="libjemalloc.so",
        mapped_prefix="libjemalloc",
        env={"MALLOC_CONF": JEMALLOC_MALLOC_CONF},
    ),
    Allocator(
        name="tcmalloc",
        flag="enable_tcmalloc",
        library_files=("libtcmalloc.so.4", "libtcmalloc_minimal.so.4", "libtcmalloc.so"),
        debian_package="libgoogle-perftools4",
        run_cpu_file="libtcmalloc.so",
        mapped_prefix="libtcmalloc",
    ),
    Allocator(
        name="glibc",
        flag="use_default_allocator",
        library_files=(),
        debian_package=None,
        run_cpu_file=None,
        mapped_prefix=None,
    ),
)

# tcmalloc measured fastest here (issue 3: 17.1 req/s vs 15.7 glibc vs 13.0 jemalloc
# under run_cpu's MALLOC_CONF); glibc is what a process has when nothing is preloaded.
DEFAULT = "tcmalloc"
FALLBACK = "glibc"


def allocator_named(name: str) -> Allocator:
    """The table entry named `name`; a name not in the table is a programming error."""
    for entry in ALLOCATORS:
        if entry.name == name:
            return entry
    raise KeyError(f"no allocator {name!r}; known: {', '.join(a.name for a in ALLOCATORS)}")


def allocator_in(library_files: Iterable[str]) -> str:
    """The allocator whose library is among these mapped file names, else FALLBACK."""
    names = list(library_files)
    for entry in ALLOCATORS:
        prefix = entry.mapped_prefix
        if prefix and any(name.startswith(prefix) for name in names):
            return entry.name
    return FALLBACK


def mapped_allocator(pid: int | str = "self", sys_root: SysRoot | None = None) -> str | None:
    """The malloc actually mapped in the process (an allocators.ALLOCATORS name); None
    when its maps cannot be read (it exited, or belongs to another user)."""
    libraries = mapped_libraries(pid, sys_root)
    return None if libraries is None else allocator_in(libraries)
