"""Soak: N requests at concurrency C to the demo model (ResNet-50) on pinned workers.

    .venv/bin/python scripts/soak.py [--requests 20000] [--concurrency 64]

Starts real TorchServe through the launcher (config/launcher.properties: one core block
per worker, tcmalloc), warms up, samples each worker's RSS, sends the requests with
apache-bench (-k) in chunks, samples RSS after every chunk, and writes JSON + Markdown
under benchmarks/results/soak/. A leak shows as RSS that keeps growing after warm-up;
a worker that died shows as a changed pid. Exit code 1 when either, or a failed
request, is seen.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a file: make the project importable
    sys.path.insert(0, str(REPO))

from benchmarks.ab import AbLoad, AbResult, run_ab  # noqa: E402
from benchmarks.loopback_torchserve import TorchServe, start_with_launcher  # noqa: E402
from torchserve_cpu.launcher.host.cpulist import format_cpulist  # noqa: E402
from torchserve_cpu.launcher.host.procfs import allowed_cpus, status_fields  # noqa: E402

IMAGE = REPO / "model_store" / "samples" / "shapes.jpg"
RESULTS = REPO / "benchmarks" / "results" / "soak"
MAX_GROWTH_PCT = 5.0


def rss_bytes(pid: int) -> int:
    """Resident set size from /proc/<pid>/status (VmRSS, kB); 0 if the process is gone."""
    status = status_fields(pid) or {}
    return int(status.get("VmRSS", "0 kB").split()[0]) * 1024


def cpus_allowed(pid: int) -> str:
    """The CPUs a process may run on, as a cpulist ("" if it is gone)."""
    try:
        return format_cpulist(allowed_cpus(pid))
    except ProcessLookupError:
        return ""


@dataclass
class SoakResult:
    """What one soak saw; RSS in MiB keyed by worker pid (as str, for JSON)."""

    model: str
    requests: int
    concurrency: int
    warmup: int
    complete: int = 0
    failed: int = 0
    duration_s: float = 0.0
    requests_per_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    workers_before: list[int] = field(default_factory=list)
    workers_after: list[int] = field(default_factory=list)
    cpus: dict[str, str] = field(default_factory=dict)
    rss_after_warmup_mib: dict[str, float] = field(default_factory=dict)
    rss_samples_mib: dict[str, list[float]] = field(default_factory=dict)
    rss_growth_pct: dict[str, float] = field(default_factory=dict)

    @property
    def max_growth_pct(self) -> float:
        return max(self.rss_growth_pct.values(), default=0.0)

    @property
    def passed(self) -> bool:
        return (self.failed == 0 and self.complete == self.requests
                and self.workers_before == self.workers_after
                and self.max_growth_pct < MAX_GROWTH_PCT)


def default_warmup(requests: int, concurrency: int) -> int:
    """Enough for every client to have been served a few times, and allocators to settle."""
    return max(concurrency * 4, requests // 20)


def chunk_sizes(requests: int, chunks: int) -> list[int]:
    """`requests` split into `chunks` near-equal ab runs (RSS is sampled between them)."""
    chunks = max(1, min(chunks, requests))
    base, extra = divmod(requests, chunks)
    return [base + (1 if index < extra else 0) for index in range(chunks)]


def mib(value: int) -> float:
    return round(value / 2**20, 1)


def soak(
    handle: TorchServe,
    model: str,
    requests: int,
    concurrency: int,
    warmup: int | None = None,
    chunks: int = 4,
    postfile: Path = IMAGE,
    content_type: str = "image/jpeg",
    log_dir: Path | None = None,
) -> SoakResult:
    """Drive a READY TorchServe and measure; the caller starts and stops it."""
    warmup = default_warmup(requests, concurrency) if warmup is None else warmup
    load = AbLoad(f"{handle.inference_url}/predictions/{model}", postfile, content_type,
                  concurrency, requests)
    result = SoakResult(model, requests, concurrency, warmup)
    if warmup:
        run_ab(load, warmup, log_dir / "warmup.txt" if log_dir else None)
    pids = sorted(handle.worker_pids(model))
    result.workers_before = pids
    result.cpus = {str(pid): cpus_allowed(pid) for pid in pids}
    baseline = {pid: rss_bytes(pid) for pid in pids}
    result.rss_after_warmup_mib = {str(pid): mib(rss) for pid, rss in baseline.items()}
    result.rss_samples_mib = {str(pid): [] for pid in pids}
    runs: list[AbResult] = []
    for index, size in enumerate(chunk_sizes(requests, chunks)):
        log = log_dir / f"chunk-{index}.txt" if log_dir else None
        runs.append(run_ab(load, size, log))
        for pid in pids:
            result.rss_samples_mib[str(pid)].append(mib(rss_bytes(pid)))
    result.workers_after = sorted(handle.worker_pids(model))
    result.complete = sum(run.complete for run in runs)
    result.failed = sum(run.errors for run in runs)
    result.duration_s = round(sum(run.duration_s for run in runs), 2)
    result.requests_per_s = round(result.complete / result.duration_s, 1) if runs else 0.0
    # ab reports percentiles per run: the worst chunk's is an upper bound for the whole.
    result.p50_ms = max((r.percentile(50) or 0.0 for r in runs), default=None)
    result.p99_ms = max((r.percentile(99) or 0.0 for r in runs), default=None)
    for pid, start in baseline.items():
        end = rss_bytes(pid)
        result.rss_growth_pct[str(pid)] = round(100 * (end - start) / start, 2) if start else 0.0
    return result


def render_markdown(result: SoakResult) -> str:
    lines = [
        f"# Soak: {result.requests} requests at concurrency {result.concurrency} ({result.model})",
        "",
        f"- warm-up: {result.warmup} requests (not counted)",
        f"- complete: {result.complete}, failed: {result.failed}",
        f"- duration: {result.duration_s} s, {result.requests_per_s} req/s, "
        f"p50 <= {result.p50_ms} ms, p99 <= {result.p99_ms} ms (worst chunk)",
        f"- workers before/after: {result.workers_before} / {result.workers_after}",
        f"- verdict: {'PASS' if result.passed else 'FAIL'} "
        f"(zero failures, same workers, RSS growth < {MAX_GROWTH_PCT}%)",
        "",
        "| worker pid | cpus | RSS after warm-up (MiB) | RSS after each chunk (MiB) | growth % |",
        "|---|---|---|---|---|",
    ]
    for pid, start in result.rss_after_warmup_mib.items():
        samples = ", ".join(f"{value}" for value in result.rss_samples_mib.get(pid, []))
        lines.append(f"| {pid} | {result.cpus.get(pid, '')} | {start} | {samples} | "
                     f"{result.rss_growth_pct.get(pid, 0.0)} |")
    return "\n".join(lines) + "\n"


def write_result(result: SoakResult, out_dir: Path) -> Path:
    """soak-<N>x<C>.json and .md in out_dir; returns the JSON path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"soak-{result.requests}x{result.concurrency}"
    data = {**asdict(result), "max_growth_pct": result.max_growth_pct, "passed": result.passed}
    stem.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    stem.with_suffix(".md").write_text(render_markdown(result))
    return stem.with_suffix(".json")


def main(argv: Sequence[str] | None = None) -> int:
    from torchserve_cpu.model_store.build import build_archive

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=int, help="default: max(4 x concurrency, requests/20)")
    parser.add_argument("--chunks", type=int, default=4, help="ab runs; RSS sampled after each")
    parser.add_argument("--config", type=Path, default=REPO / "config" / "launcher.properties")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    run_dir = Path(tempfile.mkdtemp(prefix="soak-"))
    store = run_dir / "store"
    build_archive("resnet50", store)
    handle, _ = start_with_launcher(args.config, store, ["resnet50.mar"], run_dir=run_dir / "ts",
                                    extra_env={"TSCPU_REGISTRY_DIR": str(run_dir / "registry")})
    try:
        started = time.monotonic()
        handle.wait_ready(["resnet50"], timeout=600)
        print(f"ready after {time.monotonic() - started:.0f}s; run dir {run_dir}", flush=True)
        result = soak(handle, "resnet50", args.requests, args.concurrency, args.warmup,
                      args.chunks, log_dir=run_dir / "ab")
    finally:
        handle.stop()
    path = write_result(result, args.out)
    print(render_markdown(result))
    print(f"wrote {path}")
    return 0 if result.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
