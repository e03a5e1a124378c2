"""One row per (scenario, model) run, and the CSV whose columns follow benchmark-ab's
ab_report.csv (same names, same order) followed by ours."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path


@dataclass(frozen=True)
class Row:
    # --- benchmark-ab's ab_report.csv columns (its names are in AB_COLUMNS) ---
    benchmark: str
    batch_size: int
    batch_delay: int
    workers: int
    model: str
    concurrency: int
    input: str
    requests: int
    failed_requests: int
    throughput: float  # req/s
    latency_p50: float | None
    latency_p90: float | None
    latency_p99: float | None
    latency_mean: float | None
    error_rate: float  # percent
    model_p50: float | None
    model_p90: float | None
    model_p99: float | None
    predict_mean: float | None
    handler_time_mean: float | None
    waiting_time_mean: float | None
    worker_thread_mean: float | None
    cpu_percentage_mean: float | None
    memory_percentage_mean: float | None
    # --- ours ---
    scenario: str
    dtype: str
    items_per_s: float
    length_mismatches: int
    non_2xx: int
    duration_s: float
    inference_latency_mean_ms: float | None
    server_cpu_s: float
    server_cpu_percent: float
    cpu_ms_per_item: float | None
    worker_page_faults: int
    page_faults_per_request: float | None
    allocator: str
    worker_affinity: str
    raw_items_per_s: float | None = None
    serving_efficiency: float | None = None
    gflops_per_item: float | None = None
    peak_gflops: float | None = None
    peak_method: str = ""
    fraction_of_limit: float | None = None
    ratio_to_stock: float | None = None
    ratio_to_torchserve_launcher: float | None = None
    status: str = "ok"
    note: str = ""


#: ab_report.csv's header names for our first fields, in its order.
AB_COLUMNS = {
    "benchmark": "Benchmark",
    "batch_size": "Batch size",
    "batch_delay": "Batch delay",
    "workers": "Workers",
    "model": "Model",
    "concurrency": "Concurrency",
    "input": "Input",
    "requests": "Requests",
    "failed_requests": "TS failed requests",
    "throughput": "TS throughput",
    "latency_p50": "TS latency P50",
    "latency_p90": "TS latency P90",
    "latency_p99": "TS latency P99",
    "latency_mean": "TS latency mean",
    "error_rate": "TS error rate",
    "model_p50": "Model_p50",
    "model_p90": "Model_p90",
    "model_p99": "Model_p99",
}


def columns() -> list[str]:
    """CSV header: benchmark-ab's names where it has them, our field names after."""
    return [AB_COLUMNS.get(f.name, f.name) for f in fields(Row)]


def _cell(value: object) -> object:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 and value else round(value, 4)
    return value


def write_csv(path: Path, rows: Iterable[Row]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns())
        for row in rows:
            writer.writerow([_cell(v) for v in asdict(row).values()])


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows keyed by header name (for tests and for re-rendering a summary)."""
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))
