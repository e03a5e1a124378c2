"""Ratios, targets, CSV, summary and plots from hand-made rows."""

from dataclasses import replace
from pathlib import Path

from benchmarks.driver import failed_row
from benchmarks.plan import DEFAULT_LOAD, MODEL_CASES
from benchmarks.report import plot, summary_markdown
from benchmarks.results import AB_COLUMNS, columns, read_csv, write_csv
from benchmarks.scenarios import SCENARIOS
from benchmarks.targets import check_targets, with_ratios


def row(scenario: str, items: float, model: str = "resnet50", **extra: object):
    base = failed_row(SCENARIOS[scenario], MODEL_CASES[model], DEFAULT_LOAD, "")
    return replace(base, status="ok", note="", items_per_s=items, throughput=items,
                   latency_p50=100.0, latency_p99=150.0, **extra)


ROWS = [
    row("stock", 4.0),
    row("torchserve-launcher", 16.0),
    row("optimized", 20.0, serving_efficiency=0.96),
    row("optimized-bf16", 40.0, serving_efficiency=0.9),
    row("stock", 10.0, model="bert"),
    row("optimized", 20.0, model="bert"),
]


def test_ratios_are_per_model() -> None:
    rows = with_ratios(ROWS)
    by = {(r.model, r.scenario): r for r in rows}
    assert by["resnet50", "optimized-bf16"].ratio_to_stock == 10.0
    assert by["resnet50", "optimized-bf16"].ratio_to_torchserve_launcher == 2.5
    assert by["bert", "optimized"].ratio_to_stock == 2.0
    assert by["bert", "optimized"].ratio_to_torchserve_launcher is None


def test_targets_say_by_how_much() -> None:
    checks = {(c.model, c.what): c for c in check_targets(with_ratios(ROWS))}
    assert checks["resnet50", "best / stock"].met  # 10x >= 8x (bf16 allowed)
    fp32 = checks["resnet50", "best fp32 / stock"]
    assert fp32.value == 5.0 and fp32.met
    assert not checks["resnet50", "best fp32 / torchserve-launcher"].met  # 1.25 < 1.3
    assert "missed by 0.05" in checks["resnet50", "best fp32 / torchserve-launcher"].shortfall
    assert not checks["resnet50", "serving efficiency (best)"].met  # the bf16 row: 0.9
    assert "missed by 0.20" in checks["bert", "best / stock"].shortfall


def test_failed_rows_do_not_count() -> None:
    rows = with_ratios([*ROWS, failed_row(SCENARIOS["pinned"], MODEL_CASES["resnet50"],
                                          DEFAULT_LOAD, "launcher missing")])
    assert rows[-1].ratio_to_stock is None
    assert "launcher missing" in summary_markdown(rows, [], {}, [], {}, [])


def test_csv_follows_ab_report_then_ours(tmp_path: Path) -> None:
    header = columns()
    assert header[: len(AB_COLUMNS)] == list(AB_COLUMNS.values())
    assert header[0] == "Benchmark" and "TS throughput" in header and "scenario" in header
    write_csv(tmp_path / "ab_report.csv", with_ratios(ROWS))
    back = read_csv(tmp_path / "ab_report.csv")
    assert [r["scenario"] for r in back] == [r.scenario for r in ROWS]
    assert float(back[3]["ratio_to_stock"]) == 10.0
    assert back[0]["TS latency P50"] == "100.0"


def test_summary_and_plots(tmp_path: Path) -> None:
    rows = with_ratios(ROWS)
    plots = plot(rows, tmp_path)
    assert all((tmp_path / p).read_bytes()[:4] == b"\x89PNG" for p in plots)
    text = summary_markdown(rows, check_targets(rows), {"hostname": "h"}, ["peak"], {}, plots)
    assert "**10.00x stock**" in text and "![throughput](throughput.png)" in text


def test_served_record_of_the_measured_model() -> None:
    """The benchmark learns what a worker serves from its served-model record, not from the
    human ready line; a record of another model on the same server is not this one's."""
    from benchmarks.serving import served_record
    from torchserve_cpu.handlers.served_record import ServedRecord, record_line

    def record(model: str, dtype: str) -> ServedRecord:
        return ServedRecord(model, 1, f"default[trace]{' bf16' if dtype == 'bf16' else ''}",
                            "default", ("trace",), dtype, "not installed", 2.1, 1, (0,), None,
                            (), ())

    log = "\n".join([
        "2026-11-21T06:28:56,204 [INFO ] W-9000-bert_1.0-stdout MODEL_LOG - "
        + record_line(record("bert", "bf16")),
        "2026-11-21T06:28:57,204 [INFO ] W-9001-resnet50_1.0-stdout MODEL_LOG - "
        "ready model=resnet50 pipeline=default[trace] ipex=not installed dtype=fp32",
        "2026-11-21T06:28:57,205 [INFO ] W-9001-resnet50_1.0-stdout MODEL_LOG - "
        + record_line(record("resnet50", "fp32")),
    ])
    assert served_record(log, "resnet50") == record("resnet50", "fp32")
    assert served_record(log, "bert").dtype == "bf16"
    assert served_record("Torch worker started.", "resnet50") is None
