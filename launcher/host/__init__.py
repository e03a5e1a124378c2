"""Every read of the machine: /proc, /sys, cgroups, lscpu text -> plain data (Topology, CPU facts).

Callers outside `launcher.host` import from here, as psutil's callers import `psutil`, never a
platform module; the modules below read files only through `SysRoot`, so tests point them at
a saved tree.
"""

from torchserve_cpu.launcher.host.cpu import (
    ARM,
    ARM_BF16,
    ARM_INT8_DOT,
    X86,
    X86_BF16,
    X86_INT8_DOT,
    X86_INT8_SATURATING,
    Capabilities,
    CpuFacts,
    capabilities,
    normal_arch,
    parse_cpuinfo,
    read_cpu_facts,
    this_cpu,
)
from torchserve_cpu.launcher.host.cpulist import format_cpulist, parse_cpulist
from torchserve_cpu.launcher.host.facts import allowed_topology
from torchserve_cpu.launcher.host.lscpu import parse_lscpu, read_lscpu
from torchserve_cpu.launcher.host.procfs import (
    CLOCK_TICKS,
    ProcessStat,
    allowed_cpus,
    cmdline,
    cpuinfo,
    environ,
    iomp_loaded,
    is_alive,
    mapped_libraries,
    numa_pages,
    parent_pid,
    pids,
    process_stat,
    start_time,
    status_fields,
    thread_ids,
)
from torchserve_cpu.launcher.host.sysfs import (
    cgroup_cpu_quota,
    cgroup_cpuset,
    node_cpus,
    nodes_with_memory,
    read_topology,
)
from torchserve_cpu.launcher.host.sysroot import SysRoot
from torchserve_cpu.launcher.host.topology import CoreKey, Cpu, Topology

__all__ = [
    "ARM", "ARM_BF16", "ARM_INT8_DOT", "X86", "X86_BF16", "X86_INT8_DOT", "X86_INT8_SATURATING",
    "Capabilities", "CpuFacts", "capabilities", "normal_arch", "parse_cpuinfo", "read_cpu_facts",
    "this_cpu",
    "CLOCK_TICKS", "CoreKey", "Cpu", "ProcessStat", "SysRoot", "Topology", "allowed_cpus",
    "allowed_topology", "cgroup_cpu_quota", "cgroup_cpuset", "cmdline", "cpuinfo", "environ",
    "format_cpulist", "iomp_loaded", "is_alive", "mapped_libraries", "node_cpus",
    "nodes_with_memory", "numa_pages", "parent_pid", "parse_cpulist", "parse_lscpu", "pids",
    "process_stat", "read_lscpu", "read_topology", "start_time", "status_fields", "thread_ids",
]
