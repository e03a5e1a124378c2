"""Choose the optimized model: build candidates, check them against fp32 eager, fall back.

The rule, in order: the requested preset (at bf16 first when asked), then the same at
fp32, then its fallbacks, then eager fp32, which always works. A candidate is kept only if
it builds, runs and agrees with eager on the example inputs; every rejection is logged with
its reason. `auto` builds every preset of its order and keeps the fastest that agrees. The
presets, fallbacks and auto order are handlers.pipeline's vocabulary.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, replace

import torch
from torch import nn

from torchserve_cpu.handlers.accuracy import FP32_THRESHOLDS, Agreement, compare
from torchserve_cpu.handlers.ipex_support import IpexStatus
from torchserve_cpu.handlers.pipeline import (
    AUTO,
    AUTO_ORDER,
    FALLBACKS,
    PRESET_STEPS,
    Stage,
    StepContext,
    StepPlan,
    call_stage,
    run_steps,
    set_onednn_graph,
)
from torchserve_cpu.handlers.settings import GateThresholds, HandlerSettings
from torchserve_cpu.handlers.tasks import ModelInputs

log = logging.getLogger(__name__)

PROFILED_CALLS = 3  # calls before TorchScript's profiling executor runs the optimized graph


def plan_dtype(plan: StepPlan) -> str:
    """The precision a plan runs at, as the ready line and the metrics name it."""
    return "bf16" if plan.bf16 else "fp32"


@dataclass(frozen=True)
class Tried:
    """One candidate's outcome, as data (the metrics count these): `accepted` (agrees with
    eager), `refused` (built and ran, but the accuracy gate said no) or `failed`."""

    plan: StepPlan
    outcome: str


@dataclass(frozen=True)
class Optimized:
    """The chosen model plus the story of how it was chosen (for the ready log line)."""

    stage: Stage
    plan: StepPlan
    agreement: Agreement
    rejected: tuple[str, ...]
    timings_ms: tuple[tuple[str, float], ...] = ()
    tried: tuple[Tried, ...] = ()  # every candidate built, in order

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        return call_stage(self.stage, inputs)

    @property
    def dtype(self) -> str:
        return plan_dtype(self.plan)


def candidate_plans(settings: HandlerSettings) -> list[StepPlan]:
    """Plans in the order they are tried (auto: all of them, then timed)."""
    if isinstance(settings.optimize, tuple):
        names = [("custom", settings.optimize)]
    elif settings.optimize == AUTO:
        names = [(name, PRESET_STEPS[name]) for name in AUTO_ORDER]
    else:
        chain = (settings.optimize, *FALLBACKS.get(settings.optimize, ()))
        names = [(name, PRESET_STEPS[name]) for name in chain]
    precisions = [True, False] if settings.dtype == "bf16" else [False]
    plans = [StepPlan(name, steps, bf16) for name, steps in names for bf16 in precisions]
    eager = StepPlan("eager", PRESET_STEPS["eager"])
    return plans if eager in plans else [*plans, eager]


def thresholds_for(plan: StepPlan, settings: HandlerSettings, classifies: bool) -> GateThresholds:
    thresholds = settings.gate if plan.bf16 else FP32_THRESHOLDS
    # top-k agreement only means something for class scores, not embedding dimensions
    return thresholds if classifies and plan.bf16 else replace(thresholds, min_topk_agreement=0.0)


def time_stage(stage: Stage, example: ModelInputs, iterations: int = 5) -> float:
    """Median milliseconds per call after two warm-up calls."""
    for _ in range(2):
        call_stage(stage, example)
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        call_stage(stage, example)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def error_summary(error: Exception) -> str:
    """One line about a backend failure. TorchScript errors open with a generic line
    ("The following operation failed in the TorchScript interpreter.") and end with the
    real cause, so both ends are kept."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = " ... ".join(dict.fromkeys([lines[0], lines[-1]])) if lines else ""
    return f"{type(error).__name__}: {text}"[:400]


def checked_output(stage: Stage, example: ModelInputs) -> torch.Tensor:
    """The output of the graph that will serve, not of the first call.

    TorchScript's profiling executor rewrites a frozen graph on its second call (fusion
    passes, IPEX's among them). The rewritten graph can fail where the first run did not:
    with IPEX imported, a native graph after optimize_for_inference hands MKLDNN tensors
    to ipex::max_pool2d ("itensor_view_from_dense expects dense tensor input").
    """
    output = call_stage(stage, example)
    for _ in range(PROFILED_CALLS - 1):
        output = call_stage(stage, example)
    return output


def optimize(
    model: nn.Module,
    example: ModelInputs,
    settings: HandlerSettings,
    ipex: IpexStatus,
    classifies: bool,
) -> Optimized:
    """The best candidate for `model` that agrees with its own fp32 eager outputs."""
    model = model.eval()
    with torch.no_grad():
        reference = model(*example).float()
    ctx = StepContext(example=example, ipex=ipex, channels_last=settings.channels_last)
    rejected: list[str] = []
    accepted: list[tuple[StepPlan, Stage, Agreement]] = []
    tried: list[Tried] = []
    for plan in candidate_plans(settings):
        # oneDNN Graph fusion is process-wide: off unless this plan's step turns it on
        # (optimize_for_inference graphs fail with it; IPEX plans skip it).
        set_onednn_graph(False)
        try:
            stage = run_steps(model, plan, ctx)
            agreement = compare(reference, checked_output(stage, example),
                                thresholds_for(plan, settings, classifies))
        except Exception as error:  # noqa: BLE001 - any failing backend falls back
            rejected.append(f"{plan.describe()} failed: {error_summary(error)}")
            log.warning("optimizer: %s", rejected[-1])
            tried.append(Tried(plan, "failed"))
            continue
        tried.append(Tried(plan, "accepted" if agreement.passed else "refused"))
        if not agreement.passed:
            failures = "; ".join(agreement.failures)
            rejected.append(f"{plan.describe()} disagrees with eager: {failures}")
            log.warning("optimizer: %s", rejected[-1])
            continue
        accepted.append((plan, stage, agreement))
        if settings.optimize != AUTO:
            break
    if settings.optimize == AUTO and len(accepted) > 1:
        timings = [(p.describe(), time_stage(s, example)) for p, s, _ in accepted]
        fastest = min(range(len(accepted)), key=lambda i: timings[i][1])
        plan, stage, agreement = accepted[fastest]
        set_onednn_graph(stage.onednn_graph)
        return Optimized(stage, plan, agreement, tuple(rejected), tuple(timings), tuple(tried))
    plan, stage, agreement = accepted[0]
    set_onednn_graph(stage.onednn_graph)
    return Optimized(stage, plan, agreement, tuple(rejected), tried=tuple(tried))
