"""The optimizer's decisions on a tiny linear model with stand-in backends.

Each stand-in is a real step (an entry in pipeline.STEPS, added for the test) whose model
raises, disagrees with eager by a chosen amount, or is slower or faster than eager, so
`optimize` runs exactly as in a worker: order of candidates, bf16 before fp32, the strict
fp32 gate, failures caught and logged, `auto` keeping the fastest that agrees.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest
import torch
from torch import nn

from torchserve_cpu.handlers.optimize import optimizer
from torchserve_cpu.handlers.optimize.accuracy import FP32_THRESHOLDS
from torchserve_cpu.handlers.optimize.ipex_support import IpexStatus
from torchserve_cpu.handlers.optimize.optimizer import (
    PROFILED_CALLS,
    Optimized,
    Tried,
    checked_output,
    error_summary,
    optimize,
    plan_dtype,
    thresholds_for,
    time_stage,
)
from torchserve_cpu.handlers.optimize.pipeline import FALLBACKS, PRESET_STEPS, STEPS, Step, StepPlan
from torchserve_cpu.handlers.optimize.steps import Stage, StepContext, set_onednn_graph
from torchserve_cpu.handlers.settings import GateThresholds, HandlerSettings

NO_IPEX = IpexStatus(None, "not installed")
EXAMPLE = (torch.randn(3, 8, generator=torch.Generator().manual_seed(0)),)
EAGER = StepPlan("eager", ())
SLEEP_S = 0.02  # per call of the sleepy models: far above timer noise, cheap in total


class Tiny(nn.Module):
    """Eight features to six class scores."""

    def __init__(self, sleep_s: float = 0.0) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 6)
        self.sleep_s = sleep_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return self.linear(x)


def tiny(sleep_s: float = 0.0) -> Tiny:
    torch.manual_seed(0)
    return Tiny(sleep_s).eval()


class Wrapped(nn.Module):
    """The stage's model with its output changed by `change(output, call_number)`."""

    def __init__(self, inner: nn.Module, change: Callable[[torch.Tensor, int], torch.Tensor],
                 sleep_s: float = 0.0) -> None:
        super().__init__()
        self.inner, self.change, self.sleep_s, self.calls = inner, change, sleep_s, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return self.change(self.inner(x), self.calls)


def wrapping(name: str, change: Callable[[torch.Tensor, int], torch.Tensor],
             sleep_s: float = 0.0) -> Step:
    return Step(lambda stage, ctx: stage.then(name, Wrapped(stage.module, change, sleep_s)))


def failing(message: str, only_bf16: bool = False) -> Step:
    def apply(stage: Stage, ctx: StepContext) -> Stage:
        if stage.bf16 or not only_bf16:
            raise RuntimeError(message)
        return stage.then("fp32_only", stage.module)

    return Step(apply)


def fast(stage: Stage, ctx: StepContext) -> Stage:
    """The same arithmetic without eager's sleep: a backend that is really faster."""
    return stage.then("fast", stage.module.linear)


@pytest.fixture(autouse=True)
def stand_ins(monkeypatch: pytest.MonkeyPatch):
    """Stand-in steps and presets; oneDNN Graph (process-wide) off again afterwards."""
    steps = {
        "explode": failing("The following operation failed in the interpreter.\n"
                           "  frame 1\nRuntimeError: backend exploded"),
        "explode_bf16": failing("no bf16 kernel", only_bf16=True),
        # 1% larger logits: same ranking and direction, off by 1% of the largest score;
        # the loose bf16 gate accepts that, the strict fp32 one (1e-3) must not
        "scaled": wrapping("scaled", lambda out, call: out * 1.01),
        "negated": wrapping("negated", lambda out, call: -out),
        # right for two calls, wrong once the "profiling executor" has rewritten it
        "late_wrong": wrapping("late_wrong", lambda out, call: out if call < 3 else -out),
        "slow": wrapping("slow", lambda out, call: out, sleep_s=2 * SLEEP_S),
        "fast": Step(fast),
    }
    for name, step in steps.items():
        monkeypatch.setitem(STEPS, name, step)
        monkeypatch.setitem(PRESET_STEPS, name, (name,))
    yield
    set_onednn_graph(False)


def run(model: nn.Module | None = None, classifies: bool = True, **settings) -> Optimized:
    return optimize(model or tiny(), EXAMPLE, HandlerSettings(**settings), NO_IPEX, classifies)


def outcomes(chosen: Optimized) -> list[tuple[str, str]]:
    return [(tried.plan.describe(), tried.outcome) for tried in chosen.tried]


def test_first_candidate_that_agrees_is_kept_and_no_more_are_built() -> None:
    chosen = run(optimize=("fast",))
    assert chosen.plan == StepPlan("custom", ("fast",))
    assert outcomes(chosen) == [("custom[fast]", "accepted")]
    assert chosen.rejected == () and chosen.timings_ms == ()
    assert chosen.agreement.passed and chosen.dtype == "fp32"
    torch.testing.assert_close(chosen(*EXAMPLE), tiny()(*EXAMPLE), rtol=0, atol=0)


def test_order_is_preset_then_fallback_then_eager_bf16_before_fp32(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PRESET_STEPS, "default", ("explode",))
    monkeypatch.setitem(PRESET_STEPS, "jit", ("explode",))
    chosen = run(optimize="default", dtype="bf16")
    assert outcomes(chosen) == [("default[explode] bf16", "failed"),
                                ("default[explode]", "failed"),
                                ("jit[explode] bf16", "failed"),
                                ("jit[explode]", "failed"),
                                ("eager[eager]", "accepted")]
    assert chosen.plan == EAGER and len(chosen.rejected) == 4


def test_fallback_preset_is_tried_before_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PRESET_STEPS, "default", ("explode",))
    monkeypatch.setitem(PRESET_STEPS, "jit", ("fast",))
    chosen = run(optimize="default")
    assert chosen.plan == StepPlan("jit", ("fast",))
    assert outcomes(chosen) == [("default[explode]", "failed"), ("jit[fast]", "accepted")]


def test_bf16_that_fails_is_retried_at_fp32_before_the_next_preset() -> None:
    chosen = run(optimize="explode_bf16", dtype="bf16")
    assert chosen.plan == StepPlan("explode_bf16", ("explode_bf16",), bf16=False)
    assert outcomes(chosen) == [("explode_bf16[explode_bf16] bf16", "failed"),
                                ("explode_bf16[explode_bf16]", "accepted")]
    assert chosen.dtype == "fp32"


def test_bf16_that_agrees_is_served_at_bf16() -> None:
    chosen = run(optimize="fast", dtype="bf16")
    assert chosen.plan == StepPlan("fast", ("fast",), bf16=True) and chosen.dtype == "bf16"
    assert chosen.stage.autocast
    assert chosen(*EXAMPLE).dtype == torch.float32  # answers come back as fp32


def test_bf16_candidate_is_judged_by_the_loose_gate() -> None:
    chosen = run(optimize="scaled", dtype="bf16")
    assert chosen.plan == StepPlan("scaled", ("scaled",), bf16=True)
    assert chosen.agreement.max_abs_diff > FP32_THRESHOLDS.max_abs_diff


def test_fp32_candidate_is_judged_by_the_strict_gate_not_the_bf16_one() -> None:
    loose = GateThresholds(min_cosine=0.5, max_abs_diff=0.5, topk=1, min_topk_agreement=0.0)
    chosen = run(optimize="scaled", gate=loose)
    assert chosen.plan == EAGER
    assert outcomes(chosen) == [("scaled[scaled]", "refused"), ("eager[eager]", "accepted")]
    [reason] = chosen.rejected
    assert reason.startswith("scaled[scaled] disagrees with eager: max_abs_diff ")
    assert reason.endswith(f" > {FP32_THRESHOLDS.max_abs_diff}")


def test_a_candidate_that_disagrees_is_refused_with_the_reason(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=optimizer.__name__):
        chosen = run(optimize=("negated",))
    assert chosen.plan == EAGER
    assert outcomes(chosen) == [("custom[negated]", "refused"), ("eager[eager]", "accepted")]
    [reason] = chosen.rejected
    assert reason.startswith("custom[negated] disagrees with eager: cosine -1.000000 < 0.9999; ")
    assert [r.getMessage() for r in caplog.records] == [f"optimizer: {reason}"]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_the_graph_is_checked_after_the_profiling_executor_rewrote_it() -> None:
    """A graph that goes wrong on its third call (as a re-optimized TorchScript graph can)
    is refused: the check runs the model PROFILED_CALLS times and judges the last output."""
    chosen = run(optimize=("late_wrong",))
    assert PROFILED_CALLS == 3
    assert outcomes(chosen) == [("custom[late_wrong]", "refused"), ("eager[eager]", "accepted")]


def test_checked_output_is_the_output_of_the_last_of_the_profiled_calls() -> None:
    counting = Wrapped(tiny(), lambda out, call: torch.full_like(out, float(call)))
    output = checked_output(Stage(counting), EXAMPLE)
    assert counting.calls == PROFILED_CALLS
    assert output.unique().tolist() == [float(PROFILED_CALLS)]


def test_a_backend_that_raises_is_caught_logged_and_the_next_is_tried(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=optimizer.__name__):
        chosen = run(optimize=("explode",))
    assert chosen.plan == EAGER
    assert chosen.rejected == ("custom[explode] failed: RuntimeError: The following operation "
                               "failed in the interpreter. ... RuntimeError: backend exploded",)
    assert [r.getMessage() for r in caplog.records] == [f"optimizer: {chosen.rejected[0]}"]
    assert outcomes(chosen) == [("custom[explode]", "failed"), ("eager[eager]", "accepted")]


def test_a_backend_that_fails_when_run_is_caught_too() -> None:
    def broken(out: torch.Tensor, call: int) -> torch.Tensor:
        raise ValueError("kernel missing")

    STEPS["broken_run"] = wrapping("broken_run", broken)
    try:
        chosen = run(optimize=("broken_run",))
    finally:
        del STEPS["broken_run"]
    assert chosen.rejected == ("custom[broken_run] failed: ValueError: kernel missing",)


def test_eager_in_train_mode_is_checked_in_eval_mode() -> None:
    model = nn.Sequential(nn.Linear(8, 6), nn.Dropout(0.5)).train()
    chosen = run(model, optimize="eager")
    assert chosen.plan == EAGER and not model.training


def test_auto_keeps_the_fastest_candidate_that_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    # eager sleeps SLEEP_S per call, `slow` 3x that, `fast` not at all; `negated` is the
    # fastest of all but wrong, so it is never timed
    monkeypatch.setattr(optimizer, "AUTO_ORDER", ("slow", "negated", "fast", "eager"))
    chosen = run(tiny(SLEEP_S), optimize="auto")
    assert chosen.plan == StepPlan("fast", ("fast",))
    assert outcomes(chosen) == [("slow[slow]", "accepted"), ("negated[negated]", "refused"),
                                ("fast[fast]", "accepted"), ("eager[eager]", "accepted")]
    timings = dict(chosen.timings_ms)
    assert list(timings) == ["slow[slow]", "fast[fast]", "eager[eager]"]
    assert timings["fast[fast]"] < SLEEP_S * 1000 <= timings["eager[eager]"]
    assert timings["eager[eager]"] < timings["slow[slow]"]
    assert chosen.agreement.passed and chosen.stage.applied == ("fast",)


def test_auto_keeps_the_fastest_whatever_its_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(optimizer, "AUTO_ORDER", ("fast", "slow"))
    chosen = run(tiny(SLEEP_S), optimize="auto")
    assert chosen.plan == StepPlan("fast", ("fast",))
    assert [name for name, _ in chosen.timings_ms] == ["fast[fast]", "slow[slow]",
                                                       "eager[eager]"]


def test_auto_with_one_survivor_serves_it_untimed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(optimizer, "AUTO_ORDER", ("explode", "negated"))
    chosen = run(optimize="auto")
    assert chosen.plan == EAGER and chosen.timings_ms == ()
    assert outcomes(chosen) == [("explode[explode]", "failed"),
                                ("negated[negated]", "refused"), ("eager[eager]", "accepted")]


def test_onednn_graph_is_off_for_each_candidate_and_left_as_the_chosen_one_needs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []

    def probe(stage: Stage, ctx: StepContext) -> Stage:
        seen.append(torch.jit.onednn_fusion_enabled())
        return stage.then("probe", stage.module)

    monkeypatch.setitem(STEPS, "probe", Step(probe))
    monkeypatch.setitem(PRESET_STEPS, "fused_broken", ("onednn_graph", "explode"))
    monkeypatch.setitem(PRESET_STEPS, "probe", ("probe",))
    monkeypatch.setitem(FALLBACKS, "fused_broken", ("probe",))
    set_onednn_graph(True)
    chosen = run(optimize="fused_broken")
    assert chosen.plan == StepPlan("probe", ("probe",)) and seen == [False]
    assert not chosen.stage.onednn_graph and not torch.jit.onednn_fusion_enabled()

    fused = run(optimize=("onednn_graph",))
    assert fused.stage.onednn_graph and torch.jit.onednn_fusion_enabled()


def test_auto_leaves_onednn_graph_as_the_fastest_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PRESET_STEPS, "fused_slow", ("onednn_graph", "slow"))
    monkeypatch.setitem(PRESET_STEPS, "fused_fast", ("onednn_graph", "fast"))
    monkeypatch.setattr(optimizer, "AUTO_ORDER", ("fast", "fused_slow"))
    assert not run(tiny(SLEEP_S), optimize="auto").stage.onednn_graph
    assert not torch.jit.onednn_fusion_enabled()
    monkeypatch.setattr(optimizer, "AUTO_ORDER", ("slow", "fused_fast"))
    assert run(tiny(SLEEP_S), optimize="auto").stage.onednn_graph
    assert torch.jit.onednn_fusion_enabled()


def test_channels_last_setting_reaches_the_steps() -> None:
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()).eval()
    example = (torch.randn(1, 3, 6, 6),)
    off = optimize(conv, example, HandlerSettings(optimize=("channels_last",),
                                                  channels_last=False), NO_IPEX, True)
    assert off.plan.name == "custom" and off.stage.skipped == ("channels_last",)
    chosen = optimize(conv, example, HandlerSettings(optimize=("channels_last",)), NO_IPEX, True)
    assert chosen.stage.channels_last


def test_thresholds_by_precision_and_task() -> None:
    gate = GateThresholds(min_cosine=0.9, max_abs_diff=0.5, topk=3, min_topk_agreement=0.7)
    settings = HandlerSettings(gate=gate)
    bf16, fp32 = StepPlan("p", (), bf16=True), StepPlan("p", ())
    assert thresholds_for(bf16, settings, classifies=True) == gate
    int8 = StepPlan("int8", ("int8",), int8=True)
    assert thresholds_for(int8, settings, classifies=True) == gate  # the loose gate too
    no_topk = GateThresholds(min_cosine=0.9, max_abs_diff=0.5, topk=3, min_topk_agreement=0.0)
    assert thresholds_for(bf16, settings, classifies=False) == no_topk
    assert thresholds_for(int8, settings, classifies=False) == no_topk
    # fp32: the strict gate whatever the settings say; cosine and max-abs only
    strict = GateThresholds(min_cosine=FP32_THRESHOLDS.min_cosine,
                            max_abs_diff=FP32_THRESHOLDS.max_abs_diff, topk=1,
                            min_topk_agreement=0.0)
    assert thresholds_for(fp32, settings, classifies=True) == strict
    assert thresholds_for(fp32, settings, classifies=False) == strict


def test_plan_dtype_and_tried_record() -> None:
    assert plan_dtype(StepPlan("p", (), bf16=True)) == "bf16"
    assert plan_dtype(StepPlan("p", ())) == "fp32"
    assert plan_dtype(StepPlan("p", (), int8=True)) == "int8"
    assert Tried(EAGER, "accepted").outcome == "accepted"


def test_time_stage_is_the_median_after_two_warm_up_calls(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On a clock that only the stage moves: warm-up calls take 1 s each and are not
    counted; the timed calls take 50, 10, 10, 10, 50 ms."""
    clock = [100.0]
    durations = iter([1.0, 1.0, 0.05, 0.01, 0.01, 0.01, 0.05])
    calls: list[int] = []

    def module(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        clock[0] += next(durations)
        return x

    monkeypatch.setattr(optimizer.time, "perf_counter", lambda: clock[0])
    assert time_stage(Stage(module), EXAMPLE) == pytest.approx(10.0, rel=1e-9)
    assert len(calls) == 7
    calls.clear()
    durations = iter([1.0, 1.0, 0.02, 0.03])
    assert time_stage(Stage(module), EXAMPLE, iterations=2) == pytest.approx(25.0, rel=1e-9)
    assert len(calls) == 4


@pytest.mark.parametrize(("error", "summary"), [
    (ValueError("one line"), "ValueError: one line"),
    (RuntimeError(""), "RuntimeError: "),
    (RuntimeError("\n  \nfirst\nmiddle\n last \n"), "RuntimeError: first ... last"),
    (RuntimeError("same\nsame"), "RuntimeError: same"),
    (KeyError("x" * 500), "KeyError: '" + "x" * 389),
])
def test_error_summary(error: Exception, summary: str) -> None:
    assert error_summary(error) == summary
