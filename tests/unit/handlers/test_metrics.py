"""The handler's metrics through TorchServe's real metrics cache (MetricsCacheYamlImpl, read
from the shipped metrics.yaml), each line read back as TorchServe 0.12's frontend parses it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

from tests.support.capabilities import saved_facts
from tests.support.prometheus import WorkerLine, frontend_read
from tests.support.torchserve_calls import TS_METRICS_CONFIG, call, png, tiny_model_context
from torchserve_cpu.handlers import optimizing_handler, served_model
from torchserve_cpu.handlers.metrics import METRICS, STAGES, WorkerMetrics
from torchserve_cpu.handlers.optimizing_handler import OptimizingHandler
from torchserve_cpu.launcher.host.cpulist import parse_cpulist
from torchserve_cpu.launcher.resources import METRICS_CONFIG
from torchserve_cpu.launcher.torchserve.worker import WorkerPlacement

# bf16 cannot pass a gate that allows no difference at all: refused, then fp32 is accepted
SECTION = {"task": "image_classification", "optimize": "eager", "dtype": "bf16",
           "accuracy_gate": {"max_abs_diff": 0.0}, "image_size": 8, "resize_size": 8,
           "topk": 2, "warmup_iterations": 1, "itt_ranges": False}


def metric_lines(caplog: pytest.LogCaptureFixture, prefix: str = "tscpu_") -> list[WorkerLine]:
    lines = [frontend_read(r.getMessage()) for r in caplog.records]
    return [line for line in lines if line and line.name.startswith(prefix)]


def labels(line: WorkerLine) -> dict[str, str]:
    return dict(line.dimensions)


def placement(cpus: tuple[int, ...], threads: int, node: int | None = 0) -> WorkerPlacement:
    return WorkerPlacement(model="m", cpus=cpus, node=node, threads=threads,
                           allocator="tcmalloc", memory_policy="bound to node 0")


@pytest.fixture
def worker_metrics(caplog: pytest.LogCaptureFixture) -> WorkerMetrics:
    cache = MetricsCacheYamlImpl(str(METRICS_CONFIG))
    cache.initialize_cache()
    caplog.set_level(logging.INFO)
    return WorkerMetrics(cache, "m", pid=4242)


def test_metrics_yaml_is_torchserve_s_default_plus_the_table() -> None:
    """TorchServe reads one metrics config: ours must keep every default metric as it is."""
    ours = yaml.safe_load(METRICS_CONFIG.read_text())
    default = yaml.safe_load(TS_METRICS_CONFIG.read_text())
    assert ours["ts_metrics"] == default["ts_metrics"]
    declared = {(kind, spec["name"]): spec for kind, specs in ours["model_metrics"].items()
                for spec in specs}
    for kind, specs in default["model_metrics"].items():
        for spec in specs:
            assert declared.pop((kind, spec["name"])) == spec
    assert declared == {
        (spec.kind.value, spec.name): {"name": spec.name, "unit": spec.unit,
                                       "dimensions": list(spec.dimensions)}
        for spec in METRICS
    }


def test_stage_lines_reach_the_frontend_with_their_labels(
        worker_metrics: WorkerMetrics, caplog: pytest.LogCaptureFixture) -> None:
    with worker_metrics.stage("inference"):
        pass
    gauge, histogram = metric_lines(caplog)
    assert (gauge.name, gauge.kind, histogram.name, histogram.kind) == (
        "tscpu_stage_time_ms", "GAUGE", "tscpu_stage_latency_seconds", "HISTOGRAM")
    for line in (gauge, histogram):
        assert line.dimensions == (("ModelName", "m"), ("Stage", "inference"))
    assert 0 <= histogram.value * 1000 <= gauge.value + 0.001


def test_placement_cores_survive_the_frontend_s_split(
        worker_metrics: WorkerMetrics, caplog: pytest.LogCaptureFixture) -> None:
    """A cpulist's commas would split the label: "0-3,8" is sent as "0-3 8"."""
    worker_metrics.placement(placement((0, 1, 2, 3, 8), threads=5, node=None))
    [line] = metric_lines(caplog)
    assert line.name == "tscpu_worker_placement" and line.value == 5
    assert labels(line) == {"ModelName": "m", "Pid": "4242", "Cores": "0-3 8", "Node": "-",
                            "Allocator": "tcmalloc"}
    assert parse_cpulist(labels(line)["Cores"].replace(" ", ",")) == (0, 1, 2, 3, 8)


def test_re_pinning_drops_the_old_series_to_zero(
        worker_metrics: WorkerMetrics, caplog: pytest.LogCaptureFixture) -> None:
    worker_metrics.placement(placement((0, 1), threads=2))
    worker_metrics.placement(placement((0,), threads=2))  # the watcher moved it
    worker_metrics.placement(placement((0,), threads=1))  # its next batch applied threads
    seen = [(labels(line)["Cores"], line.value) for line in metric_lines(caplog)]
    assert seen == [("0-1", 2), ("0-1", 0), ("0", 2), ("0", 1)]


def test_handler_reports_what_it_serves_the_gate_and_every_stage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(optimizing_handler, "pin_current_worker", lambda model_name: None)
    # a CPU with bf16 units, whatever this one is: bf16 is built and judged by the gate
    monkeypatch.setattr(served_model, "this_cpu", lambda: saved_facts("sapphire_rapids"))
    handler = OptimizingHandler()
    with caplog.at_level(logging.INFO):
        handler.initialize(tiny_model_context(tmp_path, SECTION, metrics_config=METRICS_CONFIG))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING
                and r.getMessage().startswith("metrics:")]
    at_start = [(line.name, labels(line), line.value) for line in metric_lines(caplog)]
    assert at_start == [
        ("tscpu_served_model", {"ModelName": "tiny", "Pipeline": "eager[eager]",
                                "Dtype": "fp32", "Requested": "bf16"}, 1),
        ("tscpu_accuracy_gate_total", {"ModelName": "tiny", "Pipeline": "eager[eager]",
                                       "Dtype": "bf16", "Outcome": "refused"}, 1),
        ("tscpu_accuracy_gate_total", {"ModelName": "tiny", "Pipeline": "eager[eager]",
                                       "Dtype": "fp32", "Outcome": "accepted"}, 1),
    ]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        call(handler, [png((200, 30, 30)), b"not an image"])
    stages = [labels(line)["Stage"] for line in metric_lines(caplog, "tscpu_stage_time_ms")]
    assert stages == list(STAGES)
    [handler_time] = metric_lines(caplog, "HandlerTime")  # BaseHandler.handle's, still there
    assert sum(line.value for line in metric_lines(caplog, "tscpu_stage_time_ms")) <= \
        handler_time.value + 0.1


def test_a_server_config_without_the_metrics_warns_once_with_the_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """TorchServe's default metrics config: the frontend would drop the lines silently."""
    monkeypatch.setattr(optimizing_handler, "pin_current_worker", lambda model_name: None)
    with caplog.at_level(logging.INFO):
        OptimizingHandler().initialize(tiny_model_context(tmp_path, SECTION))
    [warning] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
                 and r.getMessage().startswith("metrics:")]
    assert all(spec.name in warning for spec in METRICS)
    assert f"metrics_config={METRICS_CONFIG}" in warning
