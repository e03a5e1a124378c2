"""The precision decision wired into the optimizer: what a CPU cannot run is never built,
int8 gets the activation width the CPU computes exactly, `dtype: auto` builds what the CPU
runs and serves the fastest that passes. Saved CPUs (tests/data/capabilities/), any host."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from tests.support.capabilities import saved_facts
from torchserve_cpu.handlers.model_config import parse_settings
from torchserve_cpu.handlers.optimize import steps
from torchserve_cpu.handlers.optimize.ipex_support import IpexStatus
from torchserve_cpu.handlers.optimize.optimizer import candidate_plans, optimize
from torchserve_cpu.handlers.optimize.precision import decide

NO_IPEX = IpexStatus(None, "not installed")
EXAMPLE = (torch.randn(2, 8),)


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


def dtypes_tried(dtype: str, cpu: str, optimize_: str = "eager") -> list[str]:
    settings = parse_settings({"dtype": dtype, "optimize": optimize_})
    return [("int8" if p.int8 else "bf16" if p.bf16 else "fp32")
            for p in candidate_plans(settings, decide(dtype, saved_facts(cpu)))]


def test_bf16_on_a_cpu_without_bf16_units_plans_fp32_only() -> None:
    assert dtypes_tried("bf16", "zen3") == ["fp32"]
    assert dtypes_tried("bf16", "zen4") == ["bf16", "fp32"]
    assert dtypes_tried("int8", "zen3") == ["int8", "fp32"]  # 7-bit, below


@pytest.mark.parametrize(("cpu", "expected"), [
    ("zen3", ["int8", "fp32"]),
    ("zen4", ["int8", "bf16", "fp32"]),
    ("zen5", ["int8", "bf16", "fp32"]),
    ("sapphire_rapids", ["int8", "bf16", "fp32"]),
    ("graviton3", ["int8", "bf16", "fp32"]),
])
def test_auto_plans_what_the_cpu_runs_fastest_first(cpu: str, expected: list[str]) -> None:
    assert dtypes_tried("auto", cpu) == expected


def test_a_refused_bf16_costs_no_build_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[bool] = []
    original = steps.Stage.then

    def spy(self: steps.Stage, *args: object, **kwargs: object) -> steps.Stage:
        built.append(self.bf16)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(steps.Stage, "then", spy)
    decision = decide("bf16", saved_facts("zen3"))
    started = time.perf_counter()
    chosen = optimize(net(), EXAMPLE, parse_settings({"dtype": "bf16", "optimize": "jit"}),
                      NO_IPEX, classifies=True, decision=decision)
    assert chosen.dtype == "fp32" and True not in built
    assert [t.plan.bf16 for t in chosen.tried] == [False]
    assert "no native bf16 (missing avx512_bf16 or amx_bf16)" in decision.served.reason
    assert time.perf_counter() - started < 30  # one fp32 build, never a bf16 one


@pytest.mark.parametrize(("cpu", "bits"), [("zen3", 7), ("zen4", 8), ("zen5", 8),
                                                   ("sapphire_rapids", 8)])
def test_int8_gets_the_activation_width_the_cpu_computes_exactly(
        cpu: str, bits: int, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    def fake_int8(stage: steps.Stage, ctx: steps.StepContext) -> steps.Stage:
        seen.append(ctx.activation_bits)
        raise steps.StepError("stand-in: int8 not built in this test")

    from torchserve_cpu.handlers.optimize import pipeline
    monkeypatch.setitem(pipeline.STEPS, "int8", pipeline.Step(fake_int8, copies_module=True))
    optimize(net(), EXAMPLE, parse_settings({"dtype": "int8", "optimize": "eager"}), NO_IPEX,
             classifies=True, decision=decide("int8", saved_facts(cpu)))
    assert seen == [bits]


def test_auto_serves_the_faster_of_the_first_passing_reduced_and_fp32() -> None:
    chosen = optimize(net(), EXAMPLE, parse_settings({"dtype": "auto", "optimize": "eager"}),
                      NO_IPEX, classifies=True, decision=decide("auto", saved_facts("zen4")))
    built = [t.plan.describe() for t in chosen.tried]
    # int8 passed first: bf16, a slower unit, is not built; int8 is timed against fp32
    assert built == ["quantized[int8] int8", "eager[eager]"]
    assert any("eager[eager] bf16 not built: quantized[int8] int8 passed first" in line
               for line in chosen.rejected)
    assert [name for name, _ in chosen.timings_ms] == built
    assert chosen.dtype in ("int8", "fp32")


def test_auto_builds_bf16_when_int8_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_int8(stage: steps.Stage, ctx: steps.StepContext) -> steps.Stage:
        raise steps.StepError("stand-in: this model does not quantize")

    from torchserve_cpu.handlers.optimize import pipeline
    monkeypatch.setitem(pipeline.STEPS, "int8", pipeline.Step(failing_int8, copies_module=True))
    chosen = optimize(net(), EXAMPLE, parse_settings({"dtype": "auto", "optimize": "eager"}),
                      NO_IPEX, classifies=True, decision=decide("auto", saved_facts("zen4")))
    assert [(t.plan.describe(), t.outcome) for t in chosen.tried] == [
        ("quantized[int8] int8", "failed"), ("eager[eager] bf16", "accepted"),
        ("eager[eager]", "accepted")]
    assert len(chosen.timings_ms) == 2 and chosen.dtype in ("bf16", "fp32")
