"""The worker metrics on a live TorchServe's /metrics (prometheus mode), started as `serve`
starts it (derived config: the package's metrics_config). One current placement series per
worker, equal to /proc/<pid>/status Cpus_allowed_list, also after a second worker makes the
first re-pin; the series the first one left drops to 0, and after a scale back to one
worker, the series of the worker TorchServe stopped drops to 0 as well."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.loopback_torchserve import TorchServe, http_json, post, start_with_launcher
from tests.integration.launcher.launcher_probe import (
    allowed_list,
    env_with_registry,
    wait_for,
    write_config,
)
from tests.support.prometheus import named, placement_cpus, placements, scrape
from tests.support.tiny_archive import build_tiny_archive
from torchserve_cpu.launcher.resources import HANDLER_FILE

IMAGE = Path(__file__).resolve().parents[2] / "model_store" / "samples" / "shapes.png"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[TorchServe]:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs: the second worker must move the first")
    store = tmp_path / "store"
    build_tiny_archive(Path(sys.executable).parent, str(HANDLER_FILE), tmp_path, store)
    config = write_config(tmp_path, cpu_launcher_enable="true", metrics_mode="prometheus",
                          load_models="tiny.mar", default_workers_per_model="1")
    registry = tmp_path / "registry"
    registry.mkdir()
    handle, _ = start_with_launcher(config, store, ["tiny.mar"], run_dir=tmp_path / "run",
                                    extra_env=env_with_registry(registry))
    try:
        handle.wait_ready(["tiny"], timeout=300)
        yield handle
    finally:
        handle.stop()


def seated(server: TorchServe, workers: int) -> dict[int, set[int]] | None:
    """Each worker's current placement series as CPU ids, once there are `workers` workers,
    each with one series equal to its affinity, on disjoint blocks; None until then (a
    worker re-pins on its own after a neighbour arrives: it may still sit on the old
    block for a moment)."""
    pids = server.worker_pids("tiny")
    samples = scrape(server.metrics_url)
    current = {pid: placements(samples, pid) for pid in pids}
    if len(pids) != workers or any(len(series) != 1 for series in current.values()):
        return None
    cpus = {pid: placement_cpus(series[0]) for pid, series in current.items()}
    if any(cpus[pid] != allowed_list(pid) for pid in pids):
        return None
    return cpus if workers == 1 or not set.intersection(*cpus.values()) else None


def test_placement_series_follow_the_workers_cores(server: TorchServe) -> None:
    assert post(f"{server.inference_url}/predictions/tiny", IMAGE.read_bytes(),
                "image/png").status == 200
    [(first, first_cpus)] = wait_for(lambda: seated(server, 1), timeout=60).items()
    stages = {s.labels["Stage"] for s in named(scrape(server.metrics_url), "tscpu_stage_time_ms")}
    assert stages == {"preprocess", "inference", "postprocess"}

    http_json(f"{server.management_url}/models/tiny?min_worker=2&synchronous=true", "PUT",
              timeout=300)
    cpus = wait_for(lambda: seated(server, 2), timeout=60)
    assert first in cpus  # seated() holds only on disjoint blocks
    left = [s for s in named(scrape(server.metrics_url), "tscpu_worker_placement")
            if s.labels["Pid"] == str(first) and placement_cpus(s) == first_cpus]
    assert cpus[first] != first_cpus and [s.value for s in left] == [0]

    http_json(f"{server.management_url}/models/tiny?min_worker=1&max_worker=1&synchronous=true",
              "PUT", timeout=300)
    [kept] = wait_for(lambda: seated(server, 1), timeout=60)
    [gone] = set(cpus) - {kept}

    def zeroed() -> list[float] | None:
        values = [s.value for s in named(scrape(server.metrics_url), "tscpu_worker_placement")
                  if s.labels["Pid"] == str(gone)]
        return values if values and not any(values) else None

    assert wait_for(zeroed, timeout=30)  # the stopped worker's series: all 0
