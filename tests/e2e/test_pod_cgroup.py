"""A Kubernetes pod, simulated for real: the container entrypoint started inside a cgroup v1
cpuset (what the kubelet's static CPU manager gives a Guaranteed pod) or under a CFS quota
(a pod with a CPU limit but no exclusive cores). Workers must be planned and pinned inside
what the cgroup allows, with threads = cores of their block, and requests served; the
metrics endpoint must show that placement and the stage latencies; SIGTERM (what the
kubelet sends) must stop everything with the frontend's status."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.loopback_torchserve import TorchServe, loopback_properties, post, write_properties
from tests.integration.launcher.launcher_probe import wait_for
from tests.support.prometheus import Sample, named, placement_cpus, placements, scrape
from tests.support.tiny_archive import build_tiny_archive
from torchserve_cpu.launcher.host.procfs import allowed_cpus
from torchserve_cpu.launcher.planning.allocators import mapped_allocator
from torchserve_cpu.launcher.resources import HANDLER_FILE
from torchserve_cpu.launcher.torchserve.registry import read_entries

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "config" / "container" / "entrypoint.sh"
CGROUP_V1 = Path("/sys/fs/cgroup")
IMAGE = (REPO / "model_store" / "samples" / "shapes.png").read_bytes()


def make_cgroup(controller: str, settings: dict[str, str]) -> Path:
    """A fresh cgroup v1 directory with `settings` written; skips where that is impossible."""
    root = CGROUP_V1 / controller
    if os.geteuid() != 0 or not (root / "tasks").exists():
        pytest.skip(f"needs root and a cgroup v1 {controller} hierarchy at {root} "
                    "(cgroup v2 or no privileges here)")
    path = Path(tempfile.mkdtemp(prefix="tscpu-pod-", dir=root))
    try:
        for name, value in settings.items():
            (path / name).write_text(value)
    except OSError as error:
        path.rmdir()
        pytest.skip(f"cannot configure {path}: {error}")
    return path


@pytest.fixture
def one_cpu_cpuset() -> Iterator[Path]:
    """cpuset {1}: as a Guaranteed pod with cpu: "1" gets from the static CPU manager."""
    if not {0, 1} <= set(os.sched_getaffinity(0)):
        pytest.skip("needs CPUs 0 and 1")
    cgroup = make_cgroup("cpuset", {"cpuset.cpus": "1", "cpuset.mems": "0"})
    yield cgroup
    cgroup.rmdir()


@pytest.fixture
def one_cpu_quota() -> Iterator[Path]:
    """CFS quota of one CPU over both cores: a pod with limits.cpu: 1 and no exclusivity."""
    cgroup = make_cgroup("cpu", {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "100000"})
    yield cgroup
    cgroup.rmdir()


def serve_in_cgroup(cgroup: Path, tmp_path: Path) -> tuple[subprocess.Popen, TorchServe, Path]:
    """The image's entrypoint, moved into `cgroup` before it execs `torchserve-cpu serve`."""
    store = tmp_path / "store"
    build_tiny_archive(Path(sys.executable).parent, str(HANDLER_FILE), tmp_path, store)
    properties = loopback_properties({
        "cpu_launcher_enable": "true",
        "load_models": "tiny.mar",
        "metrics_mode": "prometheus",
        "default_workers_per_model": "1",
    })
    config = tmp_path / "config.properties"
    write_properties(config, properties)
    registry = tmp_path / "registry"
    registry.mkdir()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    temp = Path(tempfile.mkdtemp(prefix="ts-", dir="/tmp"))  # short: worker socket paths
    env = {**os.environ, "TS_CONFIG_FILE": str(config), "TSCPU_MODEL_STORE": str(store),
           "TSCPU_REGISTRY_DIR": str(registry), "TEMP": str(temp),
           "LOG_LOCATION": str(run_dir / "logs"), "METRICS_LOCATION": str(run_dir / "logs"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    output = (run_dir / "entrypoint.log").open("wb")
    process = subprocess.Popen(
        ["sh", "-c", f'echo $$ > {cgroup}/tasks && exec "$0"', str(ENTRYPOINT)],
        env=env, cwd=run_dir, stdout=output, stderr=subprocess.STDOUT,
    )
    handle = TorchServe(pid=process.pid, run_dir=run_dir, config_path=config,
                        properties=properties, env=env)
    return process, handle, registry


def stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    return process.wait(timeout=120)


def check_pod(cgroup: Path, tmp_path: Path, allowed: set[int]) -> None:
    process, handle, registry = serve_in_cgroup(cgroup, tmp_path)
    try:
        handle.wait_ready(["tiny"], timeout=300)
        reply = post(f"{handle.inference_url}/predictions/tiny", IMAGE, "image/png")
        assert reply.status == 200, reply.body
        (pid,) = handle.worker_pids("tiny")
        assert str(cgroup.relative_to(CGROUP_V1 / cgroup.parent.name)) in \
            Path(f"/proc/{pid}/cgroup").read_text()
        cpus = set(allowed_cpus(pid))
        assert cpus <= allowed
        entry = wait_for(lambda: next((e for e in read_entries(registry)
                                       if e.pid == pid and e.applied_threads), None))
        assert set(entry.cpus) == cpus
        assert entry.threads == entry.applied_threads == len(cpus) == 1
        check_metrics(handle, pid, cpus)
    finally:
        status = stop(process)
    assert status == 143, (handle.run_dir / "entrypoint.log").read_text()[-3000:]


def check_metrics(handle: TorchServe, pid: int, cpus: set[int]) -> None:
    """`serve` gave TorchServe the package's metrics config (the pod's config names none):
    the worker's placement series is its cpuset and its mapped allocator, and every stage
    of the request is timed. The frontend reads worker lines on its own thread: wait."""
    def scraped() -> list[Sample] | None:
        samples = scrape(handle.metrics_url)
        timed = named(samples, "tscpu_stage_latency_seconds_count")
        return samples if placements(samples, pid) and len(timed) == 3 else None

    samples = wait_for(scraped, timeout=30)
    [placement] = placements(samples, pid)
    assert placement_cpus(placement) == cpus
    assert placement.value == len(cpus)  # threads
    assert placement.labels["Allocator"] == mapped_allocator(pid)
    stages = {s.labels["Stage"]: s.value
              for s in named(samples, "tscpu_stage_latency_seconds_count")}
    assert stages == {"preprocess": 1, "inference": 1, "postprocess": 1}
    [served] = named(samples, "tscpu_served_model")
    assert served.labels["ModelName"] == "tiny" and served.value == 1


def test_pod_with_one_exclusive_cpu(one_cpu_cpuset: Path, tmp_path: Path) -> None:
    check_pod(one_cpu_cpuset, tmp_path, allowed={1})


def test_pod_with_a_one_cpu_quota_on_two_cores(one_cpu_quota: Path, tmp_path: Path) -> None:
    check_pod(one_cpu_quota, tmp_path, allowed=set(os.sched_getaffinity(0)))
