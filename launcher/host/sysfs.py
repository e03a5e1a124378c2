"""Every read of the host's /sys: CPU topology, NUMA nodes, cgroup limits.

Every read goes through `SysRoot`, whose root can point at a saved tree, so tests run
the real parsing code over fake machines (psutil's habit) instead of mocking calls.
Which cgroup a process is in comes from /proc, through procfs.
"""

from __future__ import annotations

from pathlib import Path

from torchserve_cpu.launcher.host.cpulist import parse_cpulist
from torchserve_cpu.launcher.host.procfs import CgroupDir, cgroup_dirs
from torchserve_cpu.launcher.host.sysroot import SysRoot
from torchserve_cpu.launcher.host.topology import Cpu, Topology

CPU_DIR = "sys/devices/system/cpu"
NODE_DIR = "sys/devices/system/node"


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
    cpus_of = node_cpus(fs)
    node_of = {cpu: node for node, cpus in cpus_of.items() for cpu in cpus}
    return node_of, tuple(cpus_of)


def node_cpus(sys_root: SysRoot | None = None) -> dict[int, tuple[int, ...]]:
    """CPUs of every NUMA node, nodes in id order ({} where the kernel shows none)."""
    fs = sys_root or SysRoot()
    found: dict[int, tuple[int, ...]] = {}
    for name in fs.listdir(NODE_DIR):
        if name.startswith("node") and name[4:].isdigit():
            # all digits: run_cpu kept one, so node 13 became node 1
            found[int(name[4:])] = parse_cpulist(fs.read(f"{NODE_DIR}/{name}/cpulist") or "", name)
    return dict(sorted(found.items()))


def nodes_with_memory(sys_root: SysRoot | None = None) -> tuple[int, ...] | None:
    """Nodes with memory (a memoryless node may still hold CPUs); None if unknown."""
    text = (sys_root or SysRoot()).read(f"{NODE_DIR}/has_memory")
    return None if text is None else parse_cpulist(text, f"{NODE_DIR}/has_memory")


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
