"""Measure one started server: warm-up, then one measured ab run with everything around it."""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks import procstat
from benchmarks.ab import AbLoad, run_ab, warmup_requests
from benchmarks.metrics import LogCursor, model_times, parse_metric_lines
from benchmarks.plan import Load, ModelCase
from benchmarks.results import Row
from benchmarks.scenarios import Scenario
from benchmarks.serving import Served, affinity, loaded_allocator, served_record


def measure(
    served: Served, scenario: Scenario, case: ModelCase, load: Load, raw_dir: Path
) -> Row:
    """Warm up with ~1/10 of the requests, then measure; the raw ab reports go to raw_dir."""
    ab_load = AbLoad(
        url=f"{served.server.inference_url}/predictions/{served.model_name}",
        postfile=case.input_file,
        content_type=case.content_type,
        concurrency=load.concurrency,
        requests=load.requests,
    )
    stem = f"{scenario.name}-{case.name}".replace("+", "-")
    run_ab(ab_load, warmup_requests(load.requests, load.concurrency),
           log=raw_dir / f"{stem}.warmup.txt")

    workers = served.server.worker_pids(served.model_name)
    tree = procstat.process_tree(served.server.pid)
    cursor = LogCursor(served.server.log_dir)
    before = procstat.sample(tree)
    started = time.monotonic()
    result = run_ab(ab_load, log=raw_dir / f"{stem}.ab.txt")
    wall = time.monotonic() - started
    time.sleep(0.5)  # TorchServe writes a request's metric lines just after answering it
    after = procstat.sample(procstat.process_tree(served.server.pid))

    whole = procstat.usage(before, after)
    in_workers = procstat.usage(before, after, only=_worker_trees(workers))
    times = model_times(parse_metric_lines(cursor.new_lines(), served.model_name))
    items = result.complete - result.errors
    items_per_s = result.requests_per_s * (items / result.complete if result.complete else 0)
    means = times.means
    latency_us = means.get("inference_latency_us")
    model_log = served.server.log_dir / "model_log.log"
    log_text = model_log.read_text(errors="replace") if model_log.exists() else ""
    reported = served_record(log_text, served.model_name)
    dtype, note = scenario.dtype, scenario.note
    if reported is not None:
        dtype = reported.dtype
        note = f"{note}; served pipeline {reported.pipeline}".lstrip("; ")
    return Row(
        benchmark="AB",
        batch_size=case.batch_size,
        batch_delay=load.batch_delay_ms,
        workers=load.workers,
        model=case.name,
        concurrency=load.concurrency,
        input=case.input_file.name,
        requests=load.requests,
        failed_requests=result.errors,
        throughput=result.requests_per_s,
        latency_p50=result.percentile(50),
        latency_p90=result.percentile(90),
        latency_p99=result.percentile(99),
        latency_mean=result.mean_latency_ms,
        error_rate=100.0 * result.errors / max(1, result.complete),
        model_p50=times.model_p50,
        model_p90=times.model_p90,
        model_p99=times.model_p99,
        predict_mean=means.get("predict"),
        handler_time_mean=means.get("handler_time"),
        waiting_time_mean=means.get("waiting_time"),
        worker_thread_mean=means.get("worker_thread"),
        cpu_percentage_mean=means.get("cpu_percentage"),
        memory_percentage_mean=means.get("memory_percentage"),
        scenario=scenario.name,
        dtype=dtype,
        items_per_s=items_per_s,
        length_mismatches=result.length_mismatches,
        non_2xx=result.non_2xx,
        duration_s=result.duration_s,
        inference_latency_mean_ms=latency_us / 1000 if latency_us is not None else None,
        server_cpu_s=whole.cpu_s,
        server_cpu_percent=whole.cpu_percent(wall),
        cpu_ms_per_item=1000 * whole.cpu_s / items if items else None,
        worker_page_faults=in_workers.faults,
        page_faults_per_request=in_workers.faults / result.complete if result.complete else None,
        allocator=loaded_allocator(workers[0]) if workers else "unknown",
        worker_affinity=" | ".join(affinity(pid) for pid in workers),
        note=note,
    )


def _worker_trees(workers: list[int]) -> set[int]:
    """Worker pids and their children (run_cpu wraps the real worker in a child process)."""
    pids: set[int] = set()
    for pid in workers:
        pids.update(procstat.process_tree(pid))
    return pids
