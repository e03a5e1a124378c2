"""The topology a process may plan over: online CPUs within its cpuset and affinity."""

from __future__ import annotations

from torchserve_cpu.launcher.errors import LauncherError
from torchserve_cpu.launcher.host.procfs import allowed_cpus
from torchserve_cpu.launcher.host.sysfs import cgroup_cpu_quota, cgroup_cpuset, read_topology
from torchserve_cpu.launcher.host.sysroot import SysRoot
from torchserve_cpu.launcher.host.topology import Topology


def allowed_topology(pid: int | str = "self", sys_root: SysRoot | None = None,
                     machine: Topology | None = None) -> Topology:
    """This machine as `pid` sees it: cgroup cpuset ∩ affinity, with its CPU quota.

    For a worker, pass the TorchServe frontend's pid: the worker's own affinity may
    already be narrowed (by run_cpu, or by an earlier pin). `machine`: the whole topology,
    when the caller has read it already.
    """
    fs = sys_root or SysRoot()
    allowed = set(allowed_cpus(pid, fs))
    cpuset = cgroup_cpuset(pid, fs)
    if cpuset is not None:
        allowed &= set(cpuset)
    topology = machine if machine is not None else read_topology(fs)
    restricted = topology.restrict(allowed).with_quota(cgroup_cpu_quota(pid, fs))
    if not restricted.cpus:
        raise LauncherError(f"process {pid}: no online CPU is allowed by its cpuset and affinity")
    return restricted
