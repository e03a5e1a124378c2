"""What a worker serves, where it runs and how long each stage takes, on TorchServe's metrics
endpoint, through TorchServe's own metrics API (`context.metrics`).

A worker prints one `[METRICS]` line per update; TorchServe's frontend reads the worker's
stdout and, in 0.12, keeps a line only if its metric is declared in the `model_metrics:`
section of the server's metrics config (or `model_metrics_auto_detect=true`); others are
dropped without a word (WorkerLifeCycle.ReaderThread). `add_metric_to_cache` declares a
metric in the worker only, so the declarations ship in `metrics.yaml` next to this file,
which `torchserve-cpu serve` uses when the user's config names no `metrics_config`
(`torchserve-cpu metrics-config-path` prints it for plain `torchserve --start`). The
frontend labels a series with the declared dimension names, in order, plus `Hostname`.

The series (METRICS below is the table `metrics.yaml` must match, unit-tested):
- tscpu_stage_time_ms (gauge) and tscpu_stage_latency_seconds (histogram), per ModelName
  and Stage (preprocess, inference, postprocess). The gauge is the last batch in
  milliseconds, like TorchServe's HandlerTime; the histogram is in seconds because 0.12
  builds it with the Prometheus client's default buckets (5 ms to 10 s).
- tscpu_worker_placement (gauge = OpenMP threads), per ModelName, Pid, Cores, Node,
  Allocator (as mapped in /proc/<pid>/maps); set again whenever the worker is re-pinned,
  and the series of its previous placement is set to 0.
- tscpu_served_model (gauge = 1), per ModelName, Pipeline, Dtype, Requested: what runs
  after the CPU's fit (handlers.optimize.precision) and the accuracy gate, and what
  handler.dtype asked for.
- tscpu_accuracy_gate_total (counter), per ModelName, Pipeline, Dtype, Outcome (accepted,
  refused, failed): one count per candidate each worker built at start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import NamedTuple

from ts.metrics.metric_cache_errors import MetricsCacheKeyError
from ts.metrics.metric_type_enum import MetricTypes

from torchserve_cpu.handlers.optimize import Optimized, StepPlan, plan_dtype
from torchserve_cpu.launcher.host import format_cpulist
from torchserve_cpu.launcher.resources import METRICS_CONFIG
from torchserve_cpu.launcher.torchserve import WorkerPlacement

log = logging.getLogger(__name__)

STAGES = (PREPROCESS, INFERENCE, POSTPROCESS) = ("preprocess", "inference", "postprocess")


class MetricSpec(NamedTuple):
    """One metric as metrics.yaml declares it (the frontend adds Hostname itself)."""

    name: str
    kind: MetricTypes
    unit: str
    dimensions: tuple[str, ...]


STAGE_TIME = MetricSpec("tscpu_stage_time_ms", MetricTypes.GAUGE, "ms", ("ModelName", "Stage"))
STAGE_LATENCY = MetricSpec("tscpu_stage_latency_seconds", MetricTypes.HISTOGRAM, "s",
                           ("ModelName", "Stage"))
PLACEMENT = MetricSpec("tscpu_worker_placement", MetricTypes.GAUGE, "threads",
                       ("ModelName", "Pid", "Cores", "Node", "Allocator"))
SERVED = MetricSpec("tscpu_served_model", MetricTypes.GAUGE, "workers",
                    ("ModelName", "Pipeline", "Dtype", "Requested"))
GATE = MetricSpec("tscpu_accuracy_gate_total", MetricTypes.COUNTER, "count",
                  ("ModelName", "Pipeline", "Dtype", "Outcome"))
METRICS = (STAGE_TIME, STAGE_LATENCY, PLACEMENT, SERVED, GATE)

# The frontend splits a line's dimensions at "," and each at ":" (Metric.parse in
# TorchServe 0.12's frontend); a value holding either would shift every label after it.
_UNSAFE = str.maketrans({",": " ", ":": "_", "|": "_", "\n": " "})


def label(value: object) -> str:
    """A dimension value the frontend reads back intact: "0-3,8" becomes "0-3 8"."""
    return str(value).translate(_UNSAFE)


def cores_label(cpus: Sequence[int]) -> str:
    """A CPU set as the Cores label: the kernel's cpulist with spaces for commas."""
    return label(format_cpulist(cpus))


def pipeline_label(plan: StepPlan) -> str:
    """A plan without its precision, which the Dtype label carries."""
    return replace(plan, bf16=False).describe()


class WorkerMetrics:
    """This worker's series. Each update is one line on stdout, so no call here is more
    than a log call; updates come from the inference thread and the re-balance watcher."""

    def __init__(self, cache: object | None, model_name: str, pid: int | None = None) -> None:
        self._model = label(model_name)
        self._pid = str(pid if pid is not None else os.getpid())
        self._lock = threading.Lock()
        self._placement: tuple[str, ...] | None = None
        # no cache: a handler called outside a worker (scripts, some tests) records nothing
        self._metrics = {} if cache is None else _declare(cache)

    def _emit(self, spec: MetricSpec, value: float, *labels: str) -> None:
        if self._metrics:
            self._metrics[spec].add_or_update(value, [self._model, *labels])

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time one stage of a batch (also when it raises: a failing stage took time)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - started
            self._emit(STAGE_TIME, round(seconds * 1000, 3), name)
            self._emit(STAGE_LATENCY, seconds, name)

    def placement(self, placement: WorkerPlacement) -> None:
        """The worker's seat; the series of the seat it leaves drops to 0 (a gauge series
        lives as long as the frontend, so the old one would otherwise keep its value)."""
        labels = (self._pid, cores_label(placement.cpus),
                  "-" if placement.node is None else str(placement.node),
                  label(placement.allocator))
        with self._lock:
            if self._placement is not None and self._placement != labels:
                self._emit(PLACEMENT, 0, *self._placement)
            self._placement = labels
            self._emit(PLACEMENT, placement.threads, *labels)

    def served(self, chosen: Optimized, requested: str = "fp32") -> None:
        """What runs after the CPU's fit and the accuracy gate (`requested`: handler.dtype
        as configured, so `Dtype="fp32",Requested="bf16"` shows a refusal), and the gate's
        verdict on every candidate."""
        self._emit(SERVED, 1, pipeline_label(chosen.plan), chosen.dtype, label(requested))
        for tried in chosen.tried:
            self._emit(GATE, 1, pipeline_label(tried.plan), plan_dtype(tried.plan),
                       tried.outcome)


def _declare(cache: object) -> dict[MetricSpec, object]:
    """The worker's metric objects, declared here for those the server's metrics config
    lacks; the frontend drops their lines, which is worth one warning."""
    metrics, undeclared = {}, []
    for spec in METRICS:
        try:
            metric = cache.get_metric(spec.name, spec.kind)  # type: ignore[attr-defined]
        except MetricsCacheKeyError:
            undeclared.append(spec.name)
        else:
            if list(metric.dimension_names) == list(spec.dimensions):
                metrics[spec] = metric
                continue
            log.warning("metrics: the server's metrics config declares %s with dimensions %s, "
                        "not %s: the frontend will refuse its lines; declare it as %s does",
                        spec.name, metric.dimension_names, list(spec.dimensions), METRICS_CONFIG)
        metrics[spec] = cache.add_metric_to_cache(  # type: ignore[attr-defined]
            spec.name, spec.unit, list(spec.dimensions), spec.kind)
    if undeclared:
        log.warning("metrics: the server's metrics config does not declare %s, so TorchServe "
                    "does not expose them (unless model_metrics_auto_detect=true); set "
                    "metrics_config=%s", ", ".join(undeclared), METRICS_CONFIG)
    return metrics


def worker_metrics(context: object, model_name: str) -> WorkerMetrics:
    """This worker's metrics, through the metrics cache TorchServe put in its context."""
    return WorkerMetrics(getattr(context, "metrics", None), model_name)
