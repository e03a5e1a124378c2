"""CPU time and page faults of the server's processes, from /proc/<pid>/stat.

Read straight from /proc (proc(5): fields minflt=10, majflt=12, utime=14, stime=15) because psutil
does not expose fault counts; the root is a parameter so tests can point at a saved tree.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

PROC = Path("/proc")
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcCounters:
    """Cumulative counters of one process."""

    cpu_s: float
    minflt: int
    majflt: int


def read_stat(pid: int, proc_root: Path = PROC) -> ProcCounters | None:
    """Counters of `pid`, or None if it is gone."""
    try:
        text = (proc_root / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state), so field k is fields[k - 3].
    return ProcCounters(
        cpu_s=(int(fields[11]) + int(fields[12])) / _TICKS,
        minflt=int(fields[7]),
        majflt=int(fields[9]),
    )


def process_tree(root_pid: int) -> list[int]:
    """`root_pid` and all its descendants: the frontend and its workers, wrapped or not."""
    try:
        root = psutil.Process(root_pid)
        return [root_pid, *(child.pid for child in root.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def sample(pids: Iterable[int], proc_root: Path = PROC) -> dict[int, ProcCounters]:
    """Counters of every live pid in `pids`."""
    out = {}
    for pid in pids:
        counters = read_stat(pid, proc_root)
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
