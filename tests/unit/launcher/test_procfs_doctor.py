from __future__ import annotations

import os
from pathlib import Path

from torchserve_cpu.launcher.doctor import WorkerReport, numa_pages, problems
from torchserve_cpu.launcher.lscpu import read_lscpu
from torchserve_cpu.launcher.procfs import (
    FRONTEND_CLASS,
    frontend_of,
    mapped_allocator,
    parent_pid,
    start_time,
)
from torchserve_cpu.launcher.sysfs import SysRoot

DATA = Path(__file__).resolve().parents[2] / "data" / "topologies"


def fake_process(root: Path, pid: int, ppid: int, args: list[str], cwd: Path) -> None:
    proc = root / "proc" / str(pid)
    proc.mkdir(parents=True)
    (proc / "stat").write_text(f"{pid} (a b) S {ppid} 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777 0 0")
    (proc / "cmdline").write_text("\0".join(args) + "\0")
    (proc / "cwd").symlink_to(cwd)


def test_worker_finds_frontend_above_run_cpu(tmp_path: Path) -> None:
    frontend_args = [
        "java",
        "-cp",
        "x",
        FRONTEND_CLASS,
        "--python",
        "/v/bin/python",
        "-f",
        "conf/config.properties",
        "-s",
        "/store",
        "-m",
        "a=a.mar",
        "b.mar",
    ]
    fake_process(tmp_path, 100, 1, frontend_args, tmp_path / "home")
    fake_process(tmp_path, 200, 100, ["python", "-m", "torch.backends.xeon.run_cpu"], tmp_path)
    fake_process(tmp_path, 300, 200, ["python", "ts/model_service_worker.py"], tmp_path)
    frontend = frontend_of(300, SysRoot(tmp_path))
    assert frontend is not None and frontend.pid == 100
    assert frontend.config == tmp_path / "home" / "conf" / "config.properties"
    assert frontend.model_store == Path("/store")
    assert frontend.models == ("a=a.mar", "b.mar")
    assert start_time(300, SysRoot(tmp_path)) == 777  # comm with a space parses
    assert frontend_of(100, SysRoot(tmp_path)) is None


def test_this_process() -> None:
    assert parent_pid() == os.getppid()
    assert start_time("self") == start_time(os.getpid())
    assert mapped_allocator() in ("glibc", "jemalloc", "tcmalloc")


def test_numa_maps_pages() -> None:
    root = Path("/proc/self/numa_maps")
    if root.exists():
        assert sum(numa_pages(os.getpid(), SysRoot()).values()) > 0


def report(pid: int, cpus: tuple[int, ...], threads: int, nodes: tuple[int, ...]) -> WorkerReport:
    return WorkerReport(pid, 1, cpus, threads, threads + 3, "m", {}, nodes=nodes)


def test_doctor_flags_overlap_smt_cross_node_and_threads() -> None:
    xeon = read_lscpu(DATA / "xeon-8180m-2s.lscpu")
    good = [report(1, tuple(range(14)), 14, (0,)), report(2, tuple(range(14, 28)), 14, (0,))]
    assert problems(good, xeon, {}) == []
    found = problems(
        [
            report(1, (0, 1), 2, (0,)),
            report(2, (1, 2), 2, (0,)),  # overlaps pid 1 on CPU 1
            report(3, (56,), 1, (0,)),  # SMT sibling of CPU 0 (pid 1)
            report(4, (27, 28), 2, (0, 1)),  # two cores across nodes
            report(5, (40,), 4, (1,)),  # 4 threads on one core
        ],
        xeon,
        {},
    )
    text = "\n".join(found)
    assert "pids 1 and 2 overlap on CPUs 1" in text
    assert "pids 1 and 3 share SMT siblings" in text
    assert "pid 4: CPUs 27-28 span nodes (0, 1)" in text
    assert "pid 5: 4 threads on 1 physical cores" in text
