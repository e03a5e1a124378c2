"""The only code that changes the running process: affinity, threads, memory policy.

Done in-process, before the model loads, so weights are first touched on the block's
node; no numactl or taskset binary is needed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
from collections.abc import Iterable, MutableMapping

from torchserve_cpu.launcher.host import SysRoot, thread_ids

log = logging.getLogger(__name__)

MPOL_BIND = 2  # <linux/mempolicy.h>: allocate only on the given nodes
# set_mempolicy(2) numbers from the kernel's syscall tables (glibc has no wrapper).
SET_MEMPOLICY = {"x86_64": 238, "aarch64": 237, "ppc64le": 261, "s390x": 270}


def pin_threads(cpus: Iterable[int], sys_root: SysRoot | None = None) -> int:
    """Set the affinity of this process and every thread it already has.

    sched_setaffinity(0) changes only the calling thread; threads started earlier (an
    OpenMP pool created at import, TorchServe's own threads) would keep running on the
    old CPUs, so each task under /proc/self/task is moved too. Returns threads moved.
    """
    wanted = set(cpus)
    moved = 0
    for thread in thread_ids("self", sys_root) or [os.getpid()]:
        try:
            os.sched_setaffinity(thread, wanted)
            moved += 1
        except (ProcessLookupError, PermissionError):  # the thread ended meanwhile
            continue
    os.sched_setaffinity(0, wanted)
    return moved


def bind_memory(node: int, machine: str | None = None) -> str | None:
    """set_mempolicy for this thread and the threads it starts later; None on success,
    else why not (seccomp in containers, a cpuset.mems without the node, no syscall)."""
    number = SET_MEMPOLICY.get(machine or platform.machine())
    if number is None:
        return f"set_mempolicy: unknown syscall number on {platform.machine()}"
    bits = 64
    mask = (ctypes.c_ulong * (node // bits + 1))()
    mask[node // bits] = 1 << (node % bits)
    libc = ctypes.CDLL(None, use_errno=True)
    # the kernel reads maxnode - 1 bits (mm/mempolicy.c get_nodes), as numactl passes
    result = libc.syscall(number, MPOL_BIND, mask, ctypes.c_ulong(len(mask) * bits + 1))
    if result != 0:
        errno = ctypes.get_errno()
        return f"set_mempolicy(node {node}): {os.strerror(errno)}"
    return None


def set_torch_threads(threads: int) -> int | None:
    """torch.set_num_threads when torch is importable; returns what torch now reports."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return int(torch.get_num_threads())


def set_environ(values: dict[str, str], environ: MutableMapping[str, str] = os.environ) -> None:
    """Export variables so child processes (and libraries reading them late) agree."""
    environ.update(values)
