"""Every read of the host's /proc: process stat, status, environment, maps, cgroups.

The one module that knows /proc's file formats (proc(5)); callers get plain data.
Reads go through `SysRoot`, so a saved /proc can stand in for tests. "Cannot tell"
(the process is gone, or not ours to read) is None.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from torchserve_cpu.launcher.host.cpulist import parse_cpulist
from torchserve_cpu.launcher.host.sysroot import SysRoot

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # the unit of stat's times (proc(5))


@dataclass(frozen=True)
class ProcessStat:
    """The fields of /proc/<pid>/stat we use; times in clock ticks (CLOCK_TICKS a second)."""

    state: str  # field 3: R, S, D, Z (zombie), X (dead), ...
    ppid: int  # field 4
    minflt: int  # field 10
    majflt: int  # field 12
    utime: int  # field 14
    stime: int  # field 15
    start_time: int  # field 22, since boot: with the pid, names one process even after reuse

    @property
    def exited(self) -> bool:
        """A zombie (exited, not yet reaped) or dead task: it runs nothing, holds no CPUs."""
        return self.state in ("Z", "X")


def process_stat(pid: int | str = "self", sys_root: SysRoot | None = None) -> ProcessStat | None:
    """/proc/<pid>/stat, or None when the process is gone."""
    text = (sys_root or SysRoot()).read(f"proc/{pid}/stat")
    if text is None:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ")";
    # fields[0] is then field 3, so field k is fields[k - 3]
    fields = text.rsplit(")", 1)[1].split()
    return ProcessStat(
        state=fields[0],
        ppid=int(fields[1]),
        minflt=int(fields[7]),
        majflt=int(fields[9]),
        utime=int(fields[11]),
        stime=int(fields[12]),
        start_time=int(fields[19]),
    )


def parent_pid(pid: int | str = "self", sys_root: SysRoot | None = None) -> int | None:
    stat = process_stat(pid, sys_root)
    return stat.ppid if stat else None


def start_time(pid: int | str, sys_root: SysRoot | None = None) -> int | None:
    """Start time in clock ticks since boot; None for a gone or exited (zombie) process."""
    stat = process_stat(pid, sys_root)
    if stat is None or stat.exited:
        return None
    return stat.start_time


def is_alive(pid: int, started: int, sys_root: SysRoot | None = None) -> bool:
    """True when `pid` is still the process that started at `started`."""
    return start_time(pid, sys_root) == started


def status_fields(
    pid: int | str = "self", sys_root: SysRoot | None = None
) -> dict[str, str] | None:
    """/proc/<pid>/status as key -> value text ("Threads" -> "12", "VmRSS" -> "2048 kB")."""
    text = (sys_root or SysRoot()).read(f"proc/{pid}/status")
    if text is None:
        return None
    pairs = (line.partition(":") for line in text.splitlines())
    return {key: value.strip() for key, sep, value in pairs if sep}


def allowed_cpus(pid: int | str = "self", sys_root: SysRoot | None = None) -> tuple[int, ...]:
    """CPUs a process may run on (its affinity, Cpus_allowed_list; works for any pid).
    Raises ProcessLookupError when the process is gone."""
    status = status_fields(pid, sys_root)
    if status is None:
        raise ProcessLookupError(f"no /proc/{pid}/status")
    if "Cpus_allowed_list" not in status:
        raise ProcessLookupError(f"/proc/{pid}/status has no Cpus_allowed_list")
    return parse_cpulist(status["Cpus_allowed_list"], f"/proc/{pid}/status")


def thread_ids(pid: int | str = "self", sys_root: SysRoot | None = None) -> list[int]:
    """Ids of the process's threads (/proc/<pid>/task); [] when it is gone."""
    return [int(name) for name in (sys_root or SysRoot()).listdir(f"proc/{pid}/task")
            if name.isdigit()]


def environ(pid: int | str = "self", sys_root: SysRoot | None = None) -> dict[str, str] | None:
    """The environment a process started with (later changes are not visible)."""
    raw = (sys_root or SysRoot()).read_bytes(f"proc/{pid}/environ")
    if raw is None:
        return None
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs}


def numa_pages(pid: int | str = "self", sys_root: SysRoot | None = None) -> dict[int, int]:
    """Resident pages per node summed over /proc/<pid>/numa_maps (N<node>=<pages>)."""
    pages: Counter[int] = Counter()
    for line in ((sys_root or SysRoot()).read(f"proc/{pid}/numa_maps") or "").splitlines():
        for token in line.split():
            if token.startswith("N") and "=" in token and token[1:].split("=")[0].isdigit():
                node, count = token[1:].split("=")
                pages[int(node)] += int(count)
    return dict(pages)


def cpuinfo(sys_root: SysRoot | None = None) -> dict[str, str]:
    """The first processor's block of /proc/cpuinfo ("model name", "flags", ...)."""
    facts: dict[str, str] = {}
    for line in ((sys_root or SysRoot()).read("proc/cpuinfo") or "").splitlines():
        if not line.strip():
            if facts:
                break
            continue
        key, _, value = line.partition(":")
        facts[key.strip()] = value.strip()
    return facts


def cmdline(pid: int | str, sys_root: SysRoot | None = None) -> list[str]:
    text = (sys_root or SysRoot()).read(f"proc/{pid}/cmdline")
    return [part for part in (text or "").split("\0") if part]


def pids(sys_root: SysRoot | None = None) -> list[int]:
    return [int(name) for name in (sys_root or SysRoot()).listdir("proc") if name.isdigit()]


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


@dataclass(frozen=True)
class CgroupDir:
    """Where one cgroup hierarchy of a process lives on disk."""

    version: int
    path: Path  # relative to the sysfs root
    mount: Path  # the hierarchy's mount point, where walking up stops


def cgroup_dirs(pid: int | str = "self", sys_root: SysRoot | None = None) -> dict[str, CgroupDir]:
    """The process's cgroup directory per controller ("cpuset", "cpu"; v2 gives both).

    Uses /proc/<pid>/mountinfo so that a container, whose /proc/self/cgroup may name a
    host path while its mount root is the container's own cgroup, resolves correctly
    (see Documentation/admin-guide/cgroup-v2.rst, "Namespace").
    """
    fs = sys_root or SysRoot()
    memberships: dict[str, str] = {}
    for line in (fs.read(f"proc/{pid}/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            memberships[controller] = path
    found: dict[str, CgroupDir] = {}
    for line in (fs.read(f"proc/{pid}/mountinfo") or "").splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        mount_root, mount_point, fstype, options = fields[3], fields[4], tail[0], tail[2]
        if fstype == "cgroup2" and "" in memberships:
            wanted = ["cpuset", "cpu"]
            member = memberships[""]
            version = 2
        elif fstype == "cgroup":
            wanted = [c for c in ("cpuset", "cpu") if c in options.split(",")]
            member = next((memberships[c] for c in wanted if c in memberships), None)
            version = 1
        else:
            continue
        if member is None:
            continue
        relative = Path(member).relative_to(mount_root) if _under(member, mount_root) else Path()
        directory = Path(mount_point.lstrip("/")) / relative
        for controller in wanted:
            if controller not in found or version == 1:  # a v1 controller mount wins
                found[controller] = CgroupDir(version, directory, Path(mount_point.lstrip("/")))
    return found


def _under(path: str, root: str) -> bool:
    return root == "/" or path == root or path.startswith(root.rstrip("/") + "/")
