from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from tests.support.capabilities import saved_facts
from torchserve_cpu.launcher.doctor import (
    Report,
    WorkerReport,
    describe_cpu,
    problems,
    render,
    sharing_notes,
)
from torchserve_cpu.launcher.host.lscpu import read_lscpu
from torchserve_cpu.launcher.host.procfs import (
    allowed_cpus,
    cpuinfo,
    environ,
    iomp_loaded,
    mapped_libraries,
    numa_pages,
    parent_pid,
    process_stat,
    start_time,
    status_fields,
    thread_ids,
)
from torchserve_cpu.launcher.host.sysroot import SysRoot
from torchserve_cpu.launcher.planning import Pool
from torchserve_cpu.launcher.planning.allocators import ALLOCATORS, mapped_allocator
from torchserve_cpu.launcher.torchserve.processes import FRONTEND_CLASS, frontend_of
from torchserve_cpu.launcher.torchserve.registry import Entry

DATA = Path(__file__).resolve().parents[2] / "data" / "topologies"
SAVED = SysRoot(DATA.parent)  # proc/4242: a worker's /proc entry, proc/cpuinfo


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
    assert start_time(300, SysRoot(tmp_path)) == 777  # comm with a space parses
    assert frontend_of(100, SysRoot(tmp_path)) is None


def test_saved_worker_entry() -> None:
    stat = process_stat(4242, SAVED)
    assert stat is not None and not stat.exited
    assert (stat.ppid, stat.minflt, stat.majflt, stat.start_time) == (1, 1500, 7, 100)
    assert (stat.utime, stat.stime) == (250, 50)  # comm "python3 -u (worker)" parses
    status = status_fields(4242, SAVED)
    assert status is not None and (status["Threads"], status["VmRSS"]) == ("23", "524288 kB")
    assert allowed_cpus(4242, SAVED) == (0, 1)
    assert thread_ids(4242, SAVED) == [4242, 4250]
    assert environ(4242, SAVED) == {"PATH": "/usr/bin", "OMP_NUM_THREADS": "1", "EMPTY": "",
                                    "LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4"}
    assert numa_pages(4242, SAVED) == {0: 234, 1: 1056}
    assert "libc.so.6" in (mapped_libraries(4242, SAVED) or ())
    assert mapped_allocator(4242, SAVED) == "tcmalloc" and not iomp_loaded(4242, SAVED)
    assert cpuinfo(SAVED)["model name"] == "AMD EPYC 9R14 96-Core Processor"


def test_a_gone_process_is_none_or_lookup_error() -> None:
    assert process_stat(999999, SAVED) is None and start_time(999999, SAVED) is None
    assert status_fields(999999, SAVED) is None and environ(999999, SAVED) is None
    assert mapped_allocator(999999, SAVED) is None and thread_ids(999999, SAVED) == []
    with pytest.raises(ProcessLookupError):
        allowed_cpus(999999, SAVED)


def test_this_process() -> None:
    assert parent_pid() == os.getppid()
    assert start_time("self") == start_time(os.getpid())
    assert mapped_allocator() in {entry.name for entry in ALLOCATORS}
    assert set(allowed_cpus()) == os.sched_getaffinity(0)
    assert os.getpid() in thread_ids()
    stat = process_stat()
    assert stat is not None and stat.state == "R"


def test_numa_maps_pages() -> None:
    root = Path("/proc/self/numa_maps")
    if root.exists():
        assert sum(numa_pages(os.getpid()).values()) > 0


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


def test_sharing_the_registry_arranged_is_a_note_overlap_it_did_not_is_a_problem() -> None:
    xeon = read_lscpu(DATA / "xeon-8180m-2s.lscpu")
    shared = Pool(tuple(range(112)), None, "")  # --oversubscribe share: the default
    refused = Pool(tuple(range(112)), None, "--oversubscribe refuse")
    workers = [report(1, (0,), 1, (0,)), report(2, (0,), 1, (0,))]
    seated = {1: Entry(1, 0, "m", 1, 0, shared, cpus=(0,), shared_with=(2,)),
              2: Entry(2, 0, "m", 1, 1, shared, cpus=(0,), shared_with=(1,))}
    assert problems(workers, xeon, seated) == []
    assert sharing_notes(workers, seated) == [
        "pids 1 (m) and 2 (m) share CPUs 0: more workers than core blocks, shared as "
        "--oversubscribe share (the default) allows"]
    # the same overlap without the registry's say-so (or against --oversubscribe refuse)
    for entries in ({}, {1: replace(seated[1], pool=refused)}):
        assert [p for p in problems(workers, xeon, entries) if "overlap on CPUs 0" in p]
        assert sharing_notes(workers, entries) == []


def test_doctor_shows_whole_model_names() -> None:
    long = replace(report(1, (0,), 1, (0,)), model="tinyconv_compiled_bf16")
    text = render(Report((long,), ()))
    assert "tinyconv_compiled_bf16 " in text and "no problems found" in text


@pytest.mark.parametrize(("name", "expected"), [
    ("zen3", "native bf16 none; int8 dot products 7-bit activations (AVX2, no VNNI)"),
    ("sapphire_rapids", "native bf16 avx512_bf16, amx_bf16; int8 dot products amx_int8, "
                        "avx512_vnni, avx_vnni"),
    ("graviton3", "native bf16 bf16; int8 dot products i8mm, asimddp"),
])
def test_doctor_shows_the_isa_facts_the_handler_reads(name: str, expected: str) -> None:
    line = describe_cpu(saved_facts(name))
    assert line.endswith(expected)
    assert f"cpu: {line}" in render(Report((report(1, (0,), 1, (0,)),), (), (), line))


def test_doctor_names_a_onednn_cap_and_what_it_hides() -> None:
    from torchserve_cpu.launcher.host.cpu import capped

    line = describe_cpu(capped(saved_facts("zen4"), "AVX2"))
    assert "native bf16 none; int8 dot products 7-bit activations (AVX2, no VNNI)" in line
    assert line.endswith("(ONEDNN_MAX_CPU_ISA=AVX2 hides avx512_bf16, avx512_vnni, avx512f)")
