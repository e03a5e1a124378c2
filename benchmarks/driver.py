"""Run the matrix (models x scenarios) and write one result set.

benchmarks/results/<date>-<host>/: ab_report.csv, summary.md, throughput.png, latency.png,
machine.json, settings.json, configs/<run>/ (config.properties, env.json, model-config.yaml as
served) and raw/ (ab reports and TorchServe logs; gitignored).
"""

from __future__ import annotations

import datetime
import json
import shutil
import socket
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from benchmarks.measure import measure
from benchmarks.peak import PEAK_DTYPES, Peak, measure_peak
from benchmarks.plan import Load, ModelCase, cores, load_for
from benchmarks.report import plot, summary_markdown
from benchmarks.results import Row, write_csv
from benchmarks.scenarios import HANDLER_OURS, Scenario
from benchmarks.serving import start_served
from benchmarks.targets import check_targets, with_ratios

RESULTS = Path(__file__).resolve().parent / "results"
#: Built archives and their weights, kept between invocations (building ResNet-50 takes a while).
ARCHIVES = Path(tempfile.gettempdir()) / "torchserve-cpu-bench" / "archives"


@dataclass(frozen=True)
class RunSettings:
    scenarios: Sequence[Scenario]
    cases: Sequence[ModelCase]
    load: Load
    quick: bool = False
    references: bool = True  # peak GFLOP/s, FLOPs per item, raw loop
    raw_seconds: float = 10.0
    out_root: Path = RESULTS
    template: Mapping[str, str] = field(default_factory=dict)
    label: str = ""  # preset or mode name, for the summary


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def result_dir(root: Path) -> Path:
    """<date>-<host>, with -2, -3... when that day's set exists (never overwrite results)."""
    base = f"{datetime.date.today().isoformat()}-{socket.gethostname()}"
    candidate, n = root / base, 1
    while candidate.exists():
        n += 1
        candidate = root / f"{base}-{n}"
    candidate.mkdir(parents=True)
    return candidate


def failed_row(scenario: Scenario, case: ModelCase, load: Load, reason: str) -> Row:
    """A row that says the run did not happen and why (the matrix goes on)."""
    return Row(
        benchmark="AB", batch_size=case.batch_size, batch_delay=load.batch_delay_ms,
        workers=load.workers, model=case.name, concurrency=load.concurrency,
        input=case.input_file.name, requests=load.requests, failed_requests=0, throughput=0.0,
        latency_p50=None, latency_p90=None, latency_p99=None, latency_mean=None, error_rate=0.0,
        model_p50=None, model_p90=None, model_p99=None, predict_mean=None,
        handler_time_mean=None, waiting_time_mean=None, worker_thread_mean=None,
        cpu_percentage_mean=None, memory_percentage_mean=None, scenario=scenario.name,
        dtype=scenario.dtype, items_per_s=0.0, length_mismatches=0, non_2xx=0, duration_s=0.0,
        inference_latency_mean_ms=None, server_cpu_s=0.0, server_cpu_percent=0.0,
        cpu_ms_per_item=None, worker_page_faults=0, page_faults_per_request=None,
        allocator="", worker_affinity="", status="failed", note=reason.replace("\n", " ")[:300],
    )


def _save_configs(run_dir: Path, ts_dir: Path, archive: Path | None, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for path in (ts_dir / "config.properties", run_dir / "env.json"):
        if path.exists():
            shutil.copy(path, dest / path.name)
    if archive and archive.exists():
        with zipfile.ZipFile(archive) as mar:
            for member in mar.namelist():
                if member.endswith(("model-config.yaml", "MANIFEST.json")):
                    (dest / Path(member).name).write_bytes(mar.read(member))


def _save_logs(ts_dir: Path, dest: Path) -> None:
    logs = ts_dir / "logs"
    if logs.exists():
        shutil.copytree(logs, dest, dirs_exist_ok=True)


class References:
    """Raw-loop and FLOP references, computed once per distinct served model."""

    def __init__(self, settings: RunSettings, peak: Peak | None) -> None:
        self.settings = settings
        self.peak = peak
        self.cache: dict[tuple, object] = {}

    def fill(self, row: Row, scenario: Scenario, case: ModelCase, archive: Path) -> Row:
        from benchmarks.reference import measure_reference

        optimized = scenario.handler == HANDLER_OURS and case.archive is None and \
            scenario.handler_overrides.get("optimize", "default") != "eager"
        # Every eager scenario serves the same model: one eager raw loop per model case.
        overrides = tuple(sorted(scenario.handler_overrides.items())) if optimized else ()
        key = (case.name, optimized, overrides)
        if key not in self.cache:
            progress(f"  raw loop of {case.name} ({'optimized' if optimized else 'eager'})")
            try:
                self.cache[key] = measure_reference(
                    archive, case.input_file.read_bytes(), case.content_type, case.batch_size,
                    cores(), optimized, self.settings.raw_seconds)
            except Exception as error:  # a reference must not lose the served result
                self.cache[key] = error
        ref = self.cache[key]
        if isinstance(ref, Exception):
            return replace(row, note=f"{row.note}; raw loop failed: {ref}".strip("; "))
        peak, method = self.peak.best(row.dtype) if self.peak else (None, "")
        gflops = ref.flops_per_item / 1e9
        return replace(
            row,
            raw_items_per_s=ref.raw_items_per_s,
            serving_efficiency=row.items_per_s / ref.raw_items_per_s if ref.raw_items_per_s
            else None,
            gflops_per_item=gflops,
            peak_gflops=peak,
            peak_method=method,
            fraction_of_limit=row.items_per_s * gflops / peak if peak else None,
        )


def run_one(
    scenario: Scenario, case: ModelCase, settings: RunSettings, out: Path,
    refs: References | None,
) -> Row:
    load = load_for(case, settings.load)
    stem = f"{case.name}-{scenario.name}".replace("+", "-")
    run_dir = out / "raw" / stem
    archives = ARCHIVES
    ts_dir = Path(tempfile.mkdtemp(prefix="tsbench-"))  # short: see start_served
    served = None
    try:
        served = start_served(scenario, case, load, run_dir, ts_dir, archives, settings.template)
        progress(f"  ready (workers {served.server.worker_pids(served.model_name)}); ab -k "
                 f"-c {load.concurrency} -n {load.requests} after warm-up")
        row = measure(served, scenario, case, load, run_dir)
    except Exception as error:
        progress(f"  FAILED: {error}")
        (run_dir).mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(traceback.format_exc())
        return failed_row(scenario, case, load, f"{type(error).__name__}: {error}")
    finally:
        if served is not None:
            served.server.stop()
        _save_configs(run_dir, ts_dir, served.archive if served else None, out / "configs" / stem)
        _save_logs(ts_dir, run_dir / "logs")
        shutil.rmtree(ts_dir, ignore_errors=True)
    if refs is not None:
        row = refs.fill(row, scenario, case, served.archive)
    return row


def peak_lines(peak: Peak | None, threads: int) -> list[str]:
    if peak is None:
        return ["Peak not measured (--no-references)."]
    dtypes = [d for d in PEAK_DTYPES if any(d in v for v in peak.gflops.values())]
    lines = [f"Peak multiply-add rate on {threads} threads (GFLOP/s; int8: GOP/s):", "",
             f"| probe | {' | '.join(dtypes)} |", f"|---|{'---:|' * len(dtypes)}"]
    for probe, values in peak.gflops.items():
        cells = " | ".join(f"{values[d]:.0f}" if d in values else "" for d in dtypes)
        lines.append(f"| {probe} | {cells} |")
    if peak.skipped:
        lines += ["", "Native kernels not run: " + "; ".join(
            f"{name}: {why}" for name, why in peak.skipped.items()) + "."]
    for dtype in dtypes:
        value, probe = peak.best(dtype)
        lines.append(f"\nUsed as the {dtype} limit: {value:.0f} G(FL)OP/s ({probe}).")
    return lines


def run(settings: RunSettings) -> Path:
    """Run every (model, scenario) pair and write the result set; returns its folder."""
    from benchmarks.machine import machine_facts

    out = result_dir(settings.out_root)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    facts = machine_facts()
    (out / "machine.json").write_text(json.dumps(facts, indent=2) + "\n")
    meta = {
        "started": started, "label": settings.label, "quick": settings.quick,
        "load": asdict(settings.load), "argv": sys.argv,
        "scenarios": [asdict(s) for s in settings.scenarios],
        "models": [{**asdict(c), "input_file": str(c.input_file),
                    "archive": str(c.archive) if c.archive else None} for c in settings.cases],
    }
    (out / "settings.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    progress(f"results in {out}")
    peak = None
    if settings.references:
        progress(f"measuring peak GFLOP/s on {cores()} threads")
        peak = measure_peak(cores(), settings.quick)
    refs = References(settings, peak) if settings.references else None
    rows: list[Row] = []
    total = len(settings.cases) * len(settings.scenarios)
    for case in settings.cases:
        for scenario in settings.scenarios:
            progress(f"[{len(rows) + 1}/{total}] {case.name} / {scenario.name}")
            row = run_one(scenario, case, settings, out, refs)
            if row.status == "ok":
                progress(f"  {row.items_per_s:.1f} items/s, p50 {row.latency_p50} ms, "
                         f"errors {row.failed_requests}, {row.page_faults_per_request or 0:.0f} "
                         f"faults/req, allocator {row.allocator}")
            rows.append(row)
            write_csv(out / "ab_report.csv", with_ratios(rows))  # usable if interrupted
    rows = with_ratios(rows)
    write_csv(out / "ab_report.csv", rows)
    plots = plot(rows, out)
    checks = check_targets(rows)
    text = summary_markdown(rows, checks, facts, peak_lines(peak, cores()),
                            {"started": started, "load": _load_text(settings)}, plots)
    (out / "summary.md").write_text(text)
    progress(f"done: {out / 'summary.md'}")
    return out


def _load_text(settings: RunSettings) -> str:
    load = settings.load
    name = f"{settings.label}: " if settings.label else ""
    return (f"{name}{load.workers} workers, ab -c {load.concurrency} -n {load.requests}, "
            f"batch delay {load.batch_delay_ms} ms")

