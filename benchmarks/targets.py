"""Ratios between rows and the issue's targets, checked from the rows alone (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from benchmarks.results import Row
from benchmarks.scenarios import BASELINE, TORCHSERVE_LAUNCHER


def with_ratios(rows: Sequence[Row]) -> list[Row]:
    """Each row's items/s over `stock`'s and TorchServe's launcher's for the same model case."""
    def base(model: str, scenario: str) -> float | None:
        for row in rows:
            if row.model == model and row.scenario == scenario and row.status == "ok":
                return row.items_per_s or None
        return None

    out = []
    for row in rows:
        stock, tsl = base(row.model, BASELINE), base(row.model, TORCHSERVE_LAUNCHER)
        ok = row.status == "ok"
        out.append(replace(
            row,
            ratio_to_stock=row.items_per_s / stock if ok and stock else None,
            ratio_to_torchserve_launcher=row.items_per_s / tsl if ok and tsl else None,
        ))
    return out


@dataclass(frozen=True)
class Check:
    model: str
    what: str  # e.g. "best / stock"
    target: float
    value: float | None
    scenario: str  # the row the value came from

    @property
    def met(self) -> bool:
        return self.value is not None and self.value >= self.target

    @property
    def shortfall(self) -> str:
        """How far off, in words the summary can print."""
        if self.value is None:
            return "not measured"
        if self.met:
            return "met"
        gap = self.target - self.value
        return f"missed by {gap:.2f} ({self.value / self.target:.0%} of target)"


def _best(rows: Sequence[Row], model: str, fp32_only: bool) -> Row | None:
    candidates = [
        r for r in rows
        if r.model == model and r.status == "ok" and (r.dtype == "fp32" or not fp32_only)
    ]
    return max(candidates, key=lambda r: r.items_per_s, default=None)


def check_targets(rows: Sequence[Row]) -> list[Check]:
    """The issue's targets for every ResNet-50 and BERT case present in `rows`."""
    checks: list[Check] = []
    for model in dict.fromkeys(r.model for r in rows):
        if model.startswith("resnet50"):
            goals = [("best", False, 8.0, 2.2), ("best fp32", True, 4.5, 1.3)]
        elif model.startswith("bert"):
            goals = [("best", False, 2.2, None)]
        else:
            continue
        for label, fp32_only, vs_stock, vs_tsl in goals:
            best = _best(rows, model, fp32_only)
            name = best.scenario if best else "-"
            checks.append(Check(model, f"{label} / stock", vs_stock,
                                best.ratio_to_stock if best else None, name))
            if vs_tsl is not None:
                checks.append(Check(model, f"{label} / torchserve-launcher", vs_tsl,
                                    best.ratio_to_torchserve_launcher if best else None, name))
        if model.startswith("resnet50"):
            best = _best(rows, model, False)
            checks.append(Check(model, "serving efficiency (best)", 0.95,
                                best.serving_efficiency if best else None,
                                best.scenario if best else "-"))
    return checks
