from __future__ import annotations

import os

from torchserve_cpu.launcher.host.procfs import allowed_cpus
from torchserve_cpu.launcher.host.sysfs import cgroup_cpu_quota, cgroup_cpuset, read_topology
from torchserve_cpu.launcher.host.sysroot import SysRoot
from torchserve_cpu.launcher.planning.options import LauncherOptions
from torchserve_cpu.launcher.planning.planner import plan


def test_hybrid_core_kinds(sysfs_tree) -> None:
    topology = read_topology(SysRoot(sysfs_tree("sysfs-alder-lake-hybrid.txt")))
    kinds = {c.id: c.kind for c in topology.cpus}
    assert kinds[0] == kinds[15] == "performance"
    assert kinds[16] == kinds[23] == "efficiency"
    assert [c.id for c in topology.cores()[(0, 1)]] == [0, 1]
    assert len(topology.cores()) == 16


def test_cpu_less_nodes_offline_cpu_and_cgroup_v2_container(sysfs_tree) -> None:
    root = SysRoot(sysfs_tree("sysfs-snc2-cxl-container.txt"))
    topology = read_topology(root)
    assert topology.nodes == (0, 1, 2, 3)  # memory-only nodes 2 and 3 are listed
    assert 15 not in topology.cpu_ids
    assert [c.id for c in topology.cores()[(7,)]] == [7]  # sibling 15 is offline
    assert {c.node for c in topology.cpus} == {0, 1}
    assert cgroup_cpuset(sys_root=root) == tuple(range(2, 14))
    assert cgroup_cpu_quota(sys_root=root) == 4.0
    assert allowed_cpus(sys_root=root) == tuple(range(2, 14))


def test_container_plan_uses_cpuset_and_quota(sysfs_tree) -> None:
    root = SysRoot(sysfs_tree("sysfs-snc2-cxl-container.txt"))
    allowed = cgroup_cpuset(sys_root=root)
    topology = read_topology(root).restrict(allowed).with_quota(cgroup_cpu_quota(sys_root=root))
    result = plan(topology, LauncherOptions(), 2)
    # cores 2..7 are allowed; the quota pays for 4 of them; one block per node
    assert [b.cpus for b in result.blocks] == [(2, 3), (4, 5)]
    assert [b.node for b in result.blocks] == [0, 1]
    assert any("quota" in note for note in result.notes)


def test_cgroup_v1_nested_docker_cgroup(sysfs_tree) -> None:
    root = SysRoot(sysfs_tree("sysfs-cgroup-v1-docker.txt"))
    assert read_topology(root).cores()[(3,)][0].id == 3  # thread_siblings_list fallback
    assert cgroup_cpuset(sys_root=root) == (4, 5, 6)
    assert cgroup_cpu_quota(sys_root=root) == 1.5


def test_missing_files_mean_unknown(tmp_path) -> None:
    root = SysRoot(tmp_path)
    assert cgroup_cpuset(sys_root=root) is None
    assert cgroup_cpu_quota(sys_root=root) is None


def test_real_machine_affinity_matches_os() -> None:
    assert set(allowed_cpus()) == os.sched_getaffinity(0)
    assert set(allowed_cpus(os.getpid())) == os.sched_getaffinity(0)
    cpuset = cgroup_cpuset()
    assert cpuset is None or os.sched_getaffinity(0) <= set(cpuset)


def test_quota_pays_for_whole_cpus_at_least_one(sysfs_tree) -> None:
    topology = read_topology(SysRoot(sysfs_tree("sysfs-cgroup-v1-docker.txt")))
    assert topology.quota_cpus is None
    assert [topology.with_quota(q).quota_cpus for q in (0.3, 1.5, 4.0)] == [1, 1, 4]
