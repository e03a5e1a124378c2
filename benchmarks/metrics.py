"""TorchServe's own timings of a run: model time, handler time, queue time.

TorchServe 0.12 has two metric modes. In the default `log` mode the metrics port serves
nothing, but every request adds one line per metric to model_metrics.log / ts_metrics.log
(`PredictionTime.ms:8.01|#ModelName:tiny,...`), which gives per-request distributions, as
benchmark-ab reads them. In `prometheus` mode the logs stay empty and the metrics port serves
gauges (last value only) and counters (`ts_inference_latency_microseconds`,
`ts_inference_requests_total`), which only give means from before/after deltas. Both are read.
"""

from __future__ import annotations

import math
import re
import statistics
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

#: Log metric name -> the column stem benchmark-ab uses for its mean.
LOG_METRICS = {
    "PredictionTime": "predict",
    "HandlerTime": "handler_time",
    "QueueTime": "waiting_time",
    "WorkerThreadTime": "worker_thread",
    "ts_inference_latency_microseconds": "inference_latency_us",
    "CPUUtilization": "cpu_percentage",
    "MemoryUtilization": "memory_percentage",
}

_LOG_LINE = re.compile(r" - ([A-Za-z_0-9]+)\.[A-Za-z]+:([-0-9.eE+]+)\|#([^|]*)")


def parse_metric_lines(lines: Iterable[str], model: str | None = None) -> dict[str, list[float]]:
    """Values per metric name from TorchServe metric log lines; host-level lines always count,
    model-level lines only for `model` (when given)."""
    values: dict[str, list[float]] = {}
    for line in lines:
        match = _LOG_LINE.search(line)
        if not match:
            continue
        name, value, dims = match.groups()
        if model is not None and not _dims_match(dims, model):
            continue
        values.setdefault(name, []).append(float(value))
    return values


def _dims_match(dims: str, model: str) -> bool:
    pairs = dict(part.split(":", 1) for part in dims.split(",") if ":" in part)
    named = pairs.get("ModelName", pairs.get("model_name"))
    return named is None or named == model


class LogCursor:
    """Remembers where the metric logs ended, so a run reads only its own lines (the warm-up
    and earlier runs are skipped by offset, not by guessing a line count)."""

    FILES = ("model_metrics.log", "ts_metrics.log")

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.offsets = {name: self._size(name) for name in self.FILES}

    def _size(self, name: str) -> int:
        path = self.log_dir / name
        return path.stat().st_size if path.exists() else 0

    def new_lines(self) -> list[str]:
        lines: list[str] = []
        for name, offset in self.offsets.items():
            path = self.log_dir / name
            if path.exists():
                with path.open("rb") as handle:
                    handle.seek(offset)
                    lines += handle.read().decode("utf-8", errors="replace").splitlines()
        return lines


@dataclass(frozen=True)
class ModelTimes:
    """TorchServe's timings of the measured requests, in ms; None where it reported none."""

    model_p50: float | None
    model_p90: float | None
    model_p99: float | None
    means: dict[str, float | None]


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (what benchmark-ab takes from its sorted list)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


def model_times(values: Mapping[str, list[float]]) -> ModelTimes:
    """Summaries of parsed metric values: PredictionTime percentiles and each metric's mean."""
    predict = values.get("PredictionTime", [])
    means = {
        stem: (statistics.fmean(values[name]) if values.get(name) else None)
        for name, stem in LOG_METRICS.items()
    }
    return ModelTimes(
        model_p50=percentile(predict, 50),
        model_p90=percentile(predict, 90),
        model_p99=percentile(predict, 99),
        means=means,
    )


_PROM_LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+([-0-9.eE+]+|NaN)\s*$")
_PROM_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) samples of a Prometheus text exposition."""
    samples = []
    for line in text.splitlines():
        match = _PROM_LINE.match(line.strip())
        if match:
            name, labels, value = match.groups()
            samples.append((name, dict(_PROM_LABEL.findall(labels or "")), float(value)))
    return samples


def counter(samples: Iterable[tuple[str, dict[str, str], float]], name: str, model: str) -> float:
    """Sum of one counter over the model's versions (0 when absent)."""
    return sum(
        value for sample_name, labels, value in samples
        if sample_name == name and labels.get("model_name") == model
    )


def scrape(metrics_url: str, timeout: float = 10.0) -> str:
    """The metrics port's text ('' in log mode, where it serves nothing)."""
    with urllib.request.urlopen(f"{metrics_url}/metrics", timeout=timeout) as response:
        return response.read().decode("utf-8", errors="replace")


def prometheus_mean_latency_ms(before: str, after: str, model: str) -> float | None:
    """Mean inference latency of the requests between two scrapes, from counter deltas."""
    b, a = parse_prometheus(before), parse_prometheus(after)
    count = counter(a, "ts_inference_requests_total", model) - counter(
        b, "ts_inference_requests_total", model)
    if count <= 0:
        return None
    total_us = counter(a, "ts_inference_latency_microseconds", model) - counter(
        b, "ts_inference_latency_microseconds", model)
    return total_us / count / 1000.0
