"""Facts about the CPUs as pure data: what the planner plans over.

A physical core is named by `Cpu.core`, a key that SMT siblings share (the sibling
set from sysfs, or (socket, core) from lscpu). It is never a CPU id: run_cpu handed
lscpu core ids to numactl as CPU ids, which is wrong wherever siblings are numbered
adjacently (cloud VMs). Node ids are ints with gaps; some nodes have no CPUs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

CoreKey = tuple[int, ...]


@dataclass(frozen=True)
class Cpu:
    """One online logical CPU."""

    id: int
    core: CoreKey
    package: int
    node: int | None
    kind: str | None = None  # hybrid core type ("performance"/"efficiency"), None if uniform


@dataclass(frozen=True)
class Topology:
    """Online CPUs of a machine (possibly restricted to an allowed set).

    `nodes` lists every NUMA node id, including nodes without CPUs; `cpu_quota` is the
    cgroup CPU bandwidth limit in CPUs (None when unlimited or unknown).
    """

    cpus: tuple[Cpu, ...]
    nodes: tuple[int, ...] = ()
    cpu_quota: float | None = None
    source: str = ""

    def __post_init__(self) -> None:
        ids = [cpu.id for cpu in self.cpus]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{self.source}: duplicate CPU ids")
        object.__setattr__(self, "cpus", tuple(sorted(self.cpus, key=lambda c: c.id)))

    @property
    def cpu_ids(self) -> tuple[int, ...]:
        return tuple(cpu.id for cpu in self.cpus)

    def by_id(self) -> dict[int, Cpu]:
        return {cpu.id: cpu for cpu in self.cpus}

    def cores(self) -> dict[CoreKey, tuple[Cpu, ...]]:
        """CPUs of each physical core, cores ordered by their lowest CPU id."""
        grouped: dict[CoreKey, list[Cpu]] = {}
        for cpu in self.cpus:
            grouped.setdefault(cpu.core, []).append(cpu)
        return {key: tuple(members) for key, members in grouped.items()}

    def restrict(self, allowed: Iterable[int]) -> Topology:
        """The same machine seen through an allowed CPU set (cpuset, affinity)."""
        keep = set(allowed)
        return replace(self, cpus=tuple(cpu for cpu in self.cpus if cpu.id in keep))

    def with_quota(self, cpu_quota: float | None) -> Topology:
        return replace(self, cpu_quota=cpu_quota)

    @property
    def quota_cpus(self) -> int | None:
        """Whole CPUs the quota pays for (at least one): more threads would be throttled.
        None when there is no quota."""
        return None if self.cpu_quota is None else max(1, math.floor(self.cpu_quota))
