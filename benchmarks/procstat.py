"""CPU time and page faults of the server's processes, from /proc/<pid>/stat.

Read through launcher.procfs because psutil does not expose fault counts; its root is a
parameter so tests can point at a saved tree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import psutil

from torchserve_cpu.launcher.host.procfs import CLOCK_TICKS, process_stat
from torchserve_cpu.launcher.host.sysroot import SysRoot


@dataclass(frozen=True)
class ProcCounters:
    """Cumulative counters of one process."""

    cpu_s: float
    minflt: int
    majflt: int


def read_stat(pid: int, sys_root: SysRoot | None = None) -> ProcCounters | None:
    """Counters of `pid`, or None if it is gone."""
    stat = process_stat(pid, sys_root)
    if stat is None:
        return None
    cpu_s = (stat.utime + stat.stime) / CLOCK_TICKS
    return ProcCounters(cpu_s=cpu_s, minflt=stat.minflt, majflt=stat.majflt)


def process_tree(root_pid: int) -> list[int]:
    """`root_pid` and all its descendants: the frontend and its workers, wrapped or not."""
    try:
        root = psutil.Process(root_pid)
        return [root_pid, *(child.pid for child in root.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def sample(pids: Iterable[int], sys_root: SysRoot | None = None) -> dict[int, ProcCounters]:
    """Counters of every live pid in `pids`."""
    out = {}
    for pid in pids:
        counters = read_stat(pid, sys_root)
        if counters is not None:
            out[pid] = counters
    return out


@dataclass(frozen=True)
class Usage:
    """What a set of processes spent between two samples."""

    cpu_s: float
    faults: int

    def cpu_percent(self, wall_s: float) -> float:
        """Like top: 100 = one core busy for the whole interval."""
        return 100.0 * self.cpu_s / wall_s if wall_s > 0 else float("nan")


def usage(
    before: Mapping[int, ProcCounters], after: Mapping[int, ProcCounters],
    only: Iterable[int] | None = None,
) -> Usage:
    """Deltas summed over processes alive at the end; a process born in between counts from 0."""
    keep = set(after) if only is None else set(after) & set(only)
    zero = ProcCounters(0.0, 0, 0)
    cpu = 0.0
    faults = 0
    for pid in keep:
        start = before.get(pid, zero)
        cpu += after[pid].cpu_s - start.cpu_s
        faults += (after[pid].minflt - start.minflt) + (after[pid].majflt - start.majflt)
    return Usage(cpu_s=cpu, faults=faults)
