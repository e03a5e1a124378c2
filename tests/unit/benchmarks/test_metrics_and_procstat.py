"""TorchServe metric logs and Prometheus text saved from TorchServe 0.12; a saved /proc entry
(tests/data/proc, shared with the launcher's procfs tests)."""

from pathlib import Path

import pytest

from benchmarks import procstat
from benchmarks.metrics import (
    LogCursor,
    model_times,
    parse_metric_lines,
    parse_prometheus,
    percentile,
    prometheus_mean_latency_ms,
)
from torchserve_cpu.launcher.host.procfs import CLOCK_TICKS
from torchserve_cpu.launcher.host.sysroot import SysRoot

DATA = Path(__file__).parent / "data"
SAVED_ROOT = SysRoot(Path(__file__).resolve().parents[2] / "data")  # holds proc/4242


def test_log_lines_per_metric() -> None:
    lines = (DATA / "model_metrics.log").read_text().splitlines()
    values = parse_metric_lines(lines, "tiny")
    assert len(values["PredictionTime"]) == len(values["HandlerTime"]) > 0
    assert parse_metric_lines(lines, "other") == {}


def test_model_times_from_logs() -> None:
    lines = [*(DATA / "model_metrics.log").read_text().splitlines(),
             *(DATA / "ts_metrics.log").read_text().splitlines()]
    times = model_times(parse_metric_lines(lines, "tiny"))
    assert times.model_p50 is not None and times.model_p50 <= times.model_p99
    assert times.means["predict"] > 0
    assert times.means["inference_latency_us"] > 1000 * times.means["predict"] * 0.5


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (
        50.0, 99.0, 100.0)
    assert percentile([], 50) is None


def test_cursor_reads_only_new_lines(tmp_path: Path) -> None:
    log = tmp_path / "model_metrics.log"
    log.write_text("old - PredictionTime.ms:1.0|#ModelName:m,Level:Model|#x\n")
    cursor = LogCursor(tmp_path)
    with log.open("a") as handle:
        handle.write("new - PredictionTime.ms:2.0|#ModelName:m,Level:Model|#x\n")
    assert parse_metric_lines(cursor.new_lines(), "m") == {"PredictionTime": [2.0]}


def test_prometheus_counters() -> None:
    text = (DATA / "prometheus_metrics.txt").read_text()
    samples = parse_prometheus(text)
    names = {name for name, _, _ in samples}
    assert {"ts_inference_latency_microseconds", "ts_inference_requests_total"} <= names
    empty = ""
    # 50 requests, 1518496.73 us in all
    assert prometheus_mean_latency_ms(empty, text, "tiny") == pytest.approx(30.37, abs=0.01)
    assert prometheus_mean_latency_ms(text, text, "tiny") is None


def test_proc_stat_with_spaces_in_name() -> None:
    counters = procstat.read_stat(4242, SAVED_ROOT)
    assert counters is not None
    assert (counters.minflt, counters.majflt) == (1500, 7)
    assert counters.cpu_s == pytest.approx(300 / CLOCK_TICKS)
    assert procstat.read_stat(999999, SAVED_ROOT) is None


def test_usage_counts_new_processes_from_zero() -> None:
    zero = procstat.ProcCounters(0.0, 0, 0)
    before = {1: procstat.ProcCounters(1.0, 10, 0)}
    after = {1: procstat.ProcCounters(3.0, 30, 1), 2: procstat.ProcCounters(0.5, 5, 0)}
    usage = procstat.usage(before, after)
    assert usage.cpu_s == pytest.approx(2.5) and usage.faults == 26
    assert procstat.usage(before, after, only=[1]).faults == 21
    assert procstat.usage({}, {3: zero}).cpu_percent(1.0) == 0.0


def test_live_process_matches_psutil() -> None:
    import os

    import psutil

    mine = procstat.read_stat(os.getpid())
    times = psutil.Process().cpu_times()
    assert mine is not None
    assert mine.cpu_s == pytest.approx(times.user + times.system, abs=0.05)
