"""The precision study's pure parts: the table's speed ratios are per ISA block, and timing
interleaves the variants (each round times every call once)."""

from __future__ import annotations

import torch

from benchmarks import precision_study as study

FACTS = {"cpu_model": "Test CPU", "flags": ["avx2"], "torch_cpu_capabilities": {},
         "torch": "2.13", "torchao": "0.18", "load_average_at_start": (0.0, 0.0, 0.0)}


def row(variant: str, isa: str, rate: float, gate: str = "pass") -> study.Row:
    return study.Row(variant, isa, 1.0, rate, 1.0, 1.0, 10, 1.0, 0.9, 0.99, gate, gate)


def test_ratios_are_against_the_fp32_default_of_the_same_isa() -> None:
    rows = [row("fp32-default", "native", 50.0), row("int8-lowered-8bit", "native", 100.0),
            row("fp32-default-avx2", "avx2", 40.0),
            row("int8-lowered-8bit-avx2", "avx2", 60.0, "fail: cosine 0.5 < 0.8")]
    text = study.markdown(rows, FACTS)
    lines = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert "| 100.0 | 2.00 |" in lines["| int8-lowered-8bit"]
    assert "| 60.0 | 1.50 |" in lines["| int8-lowered-8bit-avx2"]
    assert lines["| int8-lowered-8bit-avx2"].endswith("| fail: cosine 0.5 < 0.8 |")
    assert "MiniLM" not in text  # no text rows, no text table


def test_timing_interleaves_the_variants(monkeypatch) -> None:
    order: list[str] = []
    switches: list[bool] = []
    monkeypatch.setattr("torchserve_cpu.handlers.optimize.steps.set_onednn_graph", switches.append)

    def call(name: str):
        return lambda x: order.append(name) or x

    batch = (torch.zeros(study.BATCH, 1),)
    rates = study.interleaved_rates([(call("a"), True), (call("b"), False)], batch)
    per_round = 2 * (study.SPEED_BATCHES + 1)  # one untimed call, then the timed ones
    assert len(order) == study.ROUNDS * per_round and len(rates) == 2
    assert order[:per_round] == ["a"] * (per_round // 2) + ["b"] * (per_round // 2)
    assert switches[:2] == [True, False] and all(rate > 0 for rate in rates)
