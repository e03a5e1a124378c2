"""Read CPU topology, cgroup limits and process affinity from /sys and /proc.

Every read goes through `SysRoot`, whose root can point at a saved tree, so tests run
the real parsing code over fake machines (psutil's habit) instead of mocking calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from torchserve_cpu.launcher.cpulist import parse_cpulist
from torchserve_cpu.launcher.topology import Cpu, Topology

CPU_DIR = "sys/devices/system/cpu"
NODE_DIR = "sys/devices/system/node"


@dataclass(frozen=True)
class SysRoot:
    """A filesystem root holding `sys/` and `proc/` (normally "/")."""

    root: Path = Path("/")

    def read(self, relative: str) -> str | None:
        """Stripped file text, or None when the file does not exist or is unreadable."""
        try:
            return (self.root / relative.lstrip("/")).read_text().strip()
        except (OSError, UnicodeDecodeError):
            return None

    def listdir(self, relative: str) -> list[str]:
        try:
            return sorted(p.name for p in (self.root / relative.lstrip("/")).iterdir())
        except OSError:
            return []


def read_topology(sys_root: SysRoot | None = None) -> Topology:
    """Topology of the online CPUs under a sysfs root.

    The core key is the sibling set (`core_cpus_list`, or the older
    `thread_siblings_list`), which stays right however siblings are numbered.
    """
    fs = sys_root or SysRoot()
    online_text = fs.read(f"{CPU_DIR}/online")
    if online_text is None:
        present = [n[3:] for n in fs.listdir(CPU_DIR) if n.startswith("cpu") and n[3:].isdigit()]
        online = tuple(sorted(int(n) for n in present))
    else:
        online = parse_cpulist(online_text, f"{CPU_DIR}/online")
    node_of, nodes = _nodes(fs)
    kinds = _core_kinds(fs, online)
    cpus = []
    for cpu_id in online:
        base = f"{CPU_DIR}/cpu{cpu_id}/topology"
        siblings_text = fs.read(f"{base}/core_cpus_list") or fs.read(f"{base}/thread_siblings_list")
        siblings = parse_cpulist(siblings_text, base) if siblings_text else (cpu_id,)
        package = int(fs.read(f"{base}/physical_package_id") or 0)
        cpus.append(
            Cpu(
                id=cpu_id,
                core=tuple(s for s in siblings if s in online) or (cpu_id,),
                package=max(package, 0),  # -1 means "unknown" on some platforms
                node=node_of.get(cpu_id),
                kind=kinds.get(cpu_id),
            )
        )
    return Topology(cpus=tuple(cpus), nodes=nodes, source=f"sysfs:{fs.root}")


def _nodes(fs: SysRoot) -> tuple[dict[int, int], tuple[int, ...]]:
    node_of: dict[int, int] = {}
    nodes = []
    for name in fs.listdir(NODE_DIR):
        if not (name.startswith("node") and name[4:].isdigit()):
            continue
        node = int(name[4:])  # all digits: run_cpu kept one, so node 13 became node 1
        nodes.append(node)
        for cpu in parse_cpulist(fs.read(f"{NODE_DIR}/{name}/cpulist") or "", name):
            node_of[cpu] = node
    return node_of, tuple(sorted(nodes))


def _core_kinds(fs: SysRoot, online: tuple[int, ...]) -> dict[int, str]:
    """Hybrid core types: Intel's cpu_core/cpu_atom PMUs, else distinct cpu_capacity.

    Uniform machines give {} so `Cpu.kind` stays None.
    """
    kinds: dict[int, str] = {}
    for pmu, kind in (("cpu_core", "performance"), ("cpu_atom", "efficiency")):
        text = fs.read(f"sys/devices/{pmu}/cpus")
        if text:
            kinds.update(dict.fromkeys(parse_cpulist(text, f"sys/devices/{pmu}/cpus"), kind))
    if kinds:
        return kinds
    capacities = {}
    for cpu in online:
        value = fs.read(f"{CPU_DIR}/cpu{cpu}/cpu_capacity")
        if value and value.isdigit():
            capacities[cpu] = int(value)
    if len(set(capacities.values())) > 1:
        top = max(capacities.values())
        return {
            cpu: "performance" if cap == top else f"capacity-{cap}"
            for cpu, cap in capacities.items()
        }
    return {}


def process_affinity(pid: int | str = "self", sys_root: SysRoot | None = None) -> tuple[int, ...]:
    """CPUs a process may run on, from /proc/<pid>/status (works for any pid)."""
    fs = sys_root or SysRoot()
    status = fs.read(f"proc/{pid}/status")
    if status is None:
        raise ProcessLookupError(f"no /proc/{pid}/status")
    for line in status.splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return parse_cpulist(line.split(":", 1)[1], f"/proc/{pid}/status")
    raise ProcessLookupError(f"/proc/{pid}/status has no Cpus_allowed_list")


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


def _ancestors(directory: CgroupDir) -> list[Path]:
    """The cgroup directory and its parents up to the hierarchy's mount point."""
    chain = [directory.path]
    current = directory.path
    while current != directory.mount and current != current.parent:
        current = current.parent
        chain.append(current)
    return chain


def cgroup_cpuset(
    pid: int | str = "self", sys_root: SysRoot | None = None
) -> tuple[int, ...] | None:
    """CPUs the process's cpuset cgroup allows, or None when no cpuset applies."""
    fs = sys_root or SysRoot()
    directory = cgroup_dirs(pid, fs).get("cpuset")
    if directory is None:
        return None
    names = (
        ("cpuset.cpus.effective",)
        if directory.version == 2
        else ("cpuset.effective_cpus", "cpuset.cpus")
    )
    for path in _ancestors(directory):
        for name in names:
            text = fs.read(f"{path}/{name}")
            if text:
                return parse_cpulist(text, f"/{path}/{name}")
    return None


def cgroup_cpu_quota(pid: int | str = "self", sys_root: SysRoot | None = None) -> float | None:
    """The tightest CPU bandwidth limit on the process's cgroups, in CPUs; None if none."""
    fs = sys_root or SysRoot()
    directory = cgroup_dirs(pid, fs).get("cpu")
    if directory is None:
        return None
    limits = []
    for path in _ancestors(directory):
        if directory.version == 2:
            quota, _, period = (fs.read(f"{path}/cpu.max") or "max").partition(" ")
        else:
            quota = fs.read(f"{path}/cpu.cfs_quota_us") or "-1"
            period = fs.read(f"{path}/cpu.cfs_period_us") or ""
        if quota not in ("max", "-1") and period:
            limits.append(int(quota) / int(period))
    return min(limits) if limits else None


def cpus_for_quota(quota: float | None) -> int | None:
    """How many whole CPUs a bandwidth limit pays for (at least one)."""
    return None if quota is None else max(1, math.floor(quota + 1e-9))
