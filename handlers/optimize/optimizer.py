"""Choose the optimized model: build candidates, check them against fp32 eager, fall back.

The rule, in order: the requested preset (at bf16 first when asked), then the same at
fp32, then its fallbacks, then eager fp32, which always works. A candidate is kept only if
it builds, runs and agrees with eager on the example inputs; every rejection is logged with
its reason. `optimize: auto` builds every preset of its order and keeps the fastest that
agrees; `dtype: auto` times the first reduced precision that passes (and every package
the archive carries) against fp32. The
presets, fallbacks and auto order are handlers.pipeline's vocabulary.
"""

from __future__ import annotations

import functools
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from torchserve_cpu.handlers.aot_package import record_name
from torchserve_cpu.handlers.optimize.accuracy import FP32_THRESHOLDS, Agreement, compare
from torchserve_cpu.handlers.optimize.archive_inputs import CheckInputs
from torchserve_cpu.handlers.optimize.ipex_support import IpexStatus
from torchserve_cpu.handlers.optimize.pipeline import (
    AOT_INT8_PLAN,
    AUTO,
    AUTO_ORDER,
    FALLBACKS,
    INT8_PLAN,
    PRESET_STEPS,
    StepPlan,
    replaces_model,
    run_steps,
)
from torchserve_cpu.handlers.optimize.precision import Decision
from torchserve_cpu.handlers.optimize.steps import Stage, StepContext, call_stage, set_onednn_graph
from torchserve_cpu.handlers.settings import GATE_OFF, GateThresholds, HandlerSettings
from torchserve_cpu.handlers.tasks import ModelInputs

log = logging.getLogger(__name__)

PROFILED_CALLS = 3  # calls before TorchScript's profiling executor runs the optimized graph


def plan_dtype(plan: StepPlan) -> str:
    """The precision a plan runs at, as the ready line and the metrics name it."""
    return "int8" if plan.int8 else "bf16" if plan.bf16 else "fp32"


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


def candidate_plans(settings: HandlerSettings, decision: Decision | None = None,
                    host_int8: bool = False) -> list[StepPlan]:
    """Plans in the order they are tried (optimize: auto, all of them, then timed).

    `decision` is what this CPU runs of the requested dtype (handlers.optimize.precision):
    a bf16 or int8 it has no units for is never built. None: the dtype as requested (auto:
    int8, bf16, fp32). `host_int8`: this host has built the archive's int8 package
    (handlers.archive.host_cache), tried before quantizing."""
    if isinstance(settings.optimize, tuple):
        names = [("custom", settings.optimize)]
    elif settings.optimize == AUTO:
        names = [(name, PRESET_STEPS[name]) for name in AUTO_ORDER]
    else:
        chain = (settings.optimize, *FALLBACKS.get(settings.optimize, ()))
        names = [(name, PRESET_STEPS[name]) for name in chain]
    dtypes = served_dtypes(settings.dtype, decision)
    precisions = [True, False] if "bf16" in dtypes else [False]
    plans = [StepPlan(name, steps, bf16) for name, steps in names for bf16 in precisions]
    if "int8" in dtypes:
        plans.insert(0, INT8_PLAN)
        if host_int8 or names[0][1] == PRESET_STEPS["aot"]:
            # the archive's int8 package first; quantizing at start only without one
            plans.insert(0, AOT_INT8_PLAN)
    eager = StepPlan("eager", PRESET_STEPS["eager"])
    return plans if eager in plans else [*plans, eager]


def served_dtypes(requested: str, decision: Decision | None) -> tuple[str, ...]:
    """The reduced precisions worth building, fastest first, then fp32."""
    if decision is not None:
        return tuple(dict.fromkeys((*(c.dtype for c in decision.candidates), "fp32")))
    return ("int8", "bf16", "fp32") if requested == "auto" else (requested, "fp32")


def thresholds_for(plan: StepPlan, settings: HandlerSettings, classifies: bool) -> GateThresholds:
    thresholds = settings.gate if plan.reduced else FP32_THRESHOLDS
    # top-k agreement only means something for class scores, not embedding dimensions
    return thresholds if classifies and plan.reduced else replace(
        thresholds, min_topk_agreement=0.0, min_confident_agreement=0.0, min_top1_in_top5=0.0)


def int8_package_owner(model_dir: Path | None, host_folder: Path | None) -> str | None:
    """Whose int8 package there is ("the archive's", "this host's"), None without one."""
    if model_dir is not None and (model_dir / record_name("int8")).exists():
        return "the archive's"
    if host_folder is not None and (host_folder / record_name("int8")).exists():
        return "this host's"
    return None


def loads_package(plan: StepPlan, model_dir: Path | None) -> bool:
    """True when `plan` only loads a package the archive carries (milliseconds)."""
    return (model_dir is not None and plan.steps == PRESET_STEPS["aot"]
            and (model_dir / record_name(plan_dtype(plan))).exists())


def first_reduced(accepted: list[tuple[StepPlan, Stage, Agreement]]) -> StepPlan | None:
    """The first bf16 or int8 plan that passed, if any."""
    return next((plan for plan, _, _ in accepted if plan.reduced), None)


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


class ExampleInputError(ValueError):
    """The eager model does not run on the example input: the archive's configuration
    (task, input shape) does not fit the model, which no backend can fix."""


class Eager:
    """The eager model and its fp32 output on the example, made on first use.

    A plan that replaces the model (aot) brings its own reference, so a worker serving it
    never imports the model file nor loads the state dict (most of a cold start)."""

    def __init__(self, model: nn.Module | Callable[[], nn.Module], example: ModelInputs) -> None:
        self._load = (lambda: model) if isinstance(model, nn.Module) else model
        self.example = example

    @functools.cached_property
    def model(self) -> nn.Module:
        return self._load().eval()

    @functools.cached_property
    def reference(self) -> torch.Tensor:
        try:
            with torch.no_grad():
                return self.model(*self.example).float()
        except Exception as error:  # noqa: BLE001 - any failure of the user's forward
            raise ExampleInputError(f"the model does not run on the example input: "
                                    f"{error_summary(error)}") from error


def checked_output(stage: Stage, example: ModelInputs) -> torch.Tensor:
    """The output of the graph that will serve, not of the first call.

    TorchScript's profiling executor rewrites a frozen graph on its second call (fusion
    passes, IPEX's among them). The rewritten graph can fail where the first run did not:
    with IPEX imported, a native graph after optimize_for_inference hands MKLDNN tensors
    to ipex::max_pool2d ("itensor_view_from_dense expects dense tensor input").
    """
    output = call_stage(stage, example)
    for _ in range(0 if stage.ahead_of_time else PROFILED_CALLS - 1):
        output = call_stage(stage, example)
    return output


def sliced_output(stage: Stage, inputs: ModelInputs, rows: int) -> torch.Tensor:
    """`stage` on `inputs` in slices of the example's `rows`: the batch size the worker
    serves, whose kernels the check then prepares. An int8 package checked on 8 photos at
    once, then called once at batch 1, spent 0.44 + 0.25 s in first calls (EfficientNet-Lite0:
    oneDNN makes its int8 primitives per batch size)."""
    return torch.cat([call_stage(stage, tuple(x[start:start + rows] for x in inputs)).float()
                      for start in range(0, inputs[0].shape[0], rows)])


def optimize(
    model: nn.Module | Callable[[], nn.Module],
    example: ModelInputs,
    settings: HandlerSettings,
    ipex: IpexStatus,
    classifies: bool,
    model_dir: Path | None = None,
    check: CheckInputs | None = None,
    decision: Decision | None = None,
    activation_bits: int | None = None,
    int8_packages: Path | None = None,
) -> Optimized:
    """The best candidate for `model` that agrees with its own fp32 eager outputs.

    `model` is the eager model or a function loading it, called only when a candidate
    needs it; `model_dir` is the unpacked archive (where aot packages are); `decision` what
    this CPU runs of the requested dtype. With `dtype: auto` the precisions the CPU runs are
    built fastest unit first, up to the first reduced one that passes the gate, then fp32 up
    to the first plan that agrees; the faster of the two serves.
    `activation_bits` overrides the decision's int8 activation width (studies, tests);
    `int8_packages` is where this host keeps the archive's int8 package when the archive has
    none (handlers.archive.host_cache)."""
    eager = Eager(model, example)
    int8 = [c for c in decision.candidates if c.dtype == "int8"] if decision else []
    ctx = StepContext(example=example, ipex=ipex, channels_last=settings.channels_last,
                      model_dir=model_dir, compile_options=settings.compile_options,
                      check=check,
                      gate=None if settings.gate == GATE_OFF else thresholds_for(
                          INT8_PLAN, settings, classifies),
                      activation_bits=activation_bits if activation_bits is not None
                      else int8[0].activation_bits if int8 else None,
                      int8_packages=int8_packages)
    timed = settings.optimize == AUTO or settings.dtype == "auto"
    rejected: list[str] = []
    accepted: list[tuple[StepPlan, Stage, Agreement]] = []
    tried: list[Tried] = []
    for plan in candidate_plans(settings, decision, int8_packages is not None):
        passed = first_reduced(accepted) if settings.dtype == "auto" else None
        if plan.reduced and passed is not None and not loads_package(plan, model_dir):
            # candidates come fastest unit first: a later reduced precision would cost its
            # build (a second int8, a bf16: 15-50 s) to win a timing by a few percent at
            # most (Zen 5: bf16 1.05x int8 raw, 0.94x served); a package costs ms: timed
            rejected.append(f"{plan.describe()} not built: {passed.describe()} passed first "
                            "and runs on this CPU's faster units")
            log.info("optimizer: %s", rejected[-1])
            continue
        # oneDNN Graph fusion is process-wide: off unless this plan's step turns it on
        # (optimize_for_inference graphs fail with it; IPEX plans skip it).
        set_onednn_graph(False)
        if plan == INT8_PLAN and (packaged := int8_package_owner(model_dir, int8_packages)):
            # its package was refused here (the line above says why); quantizing at every
            # worker start instead costs 22-149 s (benchmarks/results/precision/)
            rejected.append(f"{plan.describe()} skipped: {packaged} int8 package cannot "
                            "serve here; not quantizing at worker start")
            log.warning("optimizer: %s", rejected[-1])
            continue
        # A model that does not load or run is the archive's fault, not a backend's: raise.
        source = None if replaces_model(plan) else eager.model
        if source is not None:
            eager.reference  # noqa: B018 - computed here, outside the backend's try
        try:
            stage = run_steps(source, plan, ctx)
            output = (sliced_output(stage, stage.check_inputs, example[0].shape[0])
                      if stage.check_inputs is not None else checked_output(stage, example))
            reference = stage.reference if stage.reference is not None else eager.reference
            if check is not None and stage.reference is None:  # the archive's real inputs
                reference = check.reference(eager.model)
                output = check.outputs(lambda part, stage=stage: call_stage(stage, part))
            thresholds = thresholds_for(plan, settings, classifies)
            if stage.quick_check and stage.reference is not None:
                thresholds = replace(thresholds, min_topk_agreement=0.0,
                                     min_confident_agreement=0.0, min_top1_in_top5=0.0)
            agreement = compare(reference, output, thresholds)
        except Exception as error:  # noqa: BLE001 - any failing backend falls back
            rejected.append(f"{plan.describe()} failed: {error_summary(error)}")
            log.warning("optimizer: %s", rejected[-1])
            tried.append(Tried(plan, "failed"))
            continue
        if plan.reduced and settings.gate == GATE_OFF:
            stage = replace(stage, notes=(*stage.notes, "accuracy gate off: not checked "
                                          "against fp32 eager (speed only)"))
        tried.append(Tried(plan, "accepted" if agreement.passed else "refused"))
        if not agreement.passed:
            failures = "; ".join(agreement.failures)
            rejected.append(f"{plan.describe()} disagrees with eager: {failures}")
            log.warning("optimizer: %s", rejected[-1])
            continue
        accepted.append((plan, stage, agreement))
        if settings.optimize != AUTO and not (settings.dtype == "auto" and plan.reduced):
            break
    if timed and len(accepted) > 1:
        timings = [(p.describe(), time_stage(s, example)) for p, s, _ in accepted]
        fastest = min(range(len(accepted)), key=lambda i: timings[i][1])
        plan, stage, agreement = accepted[fastest]
        set_onednn_graph(stage.onednn_graph)
        return Optimized(stage, plan, agreement, tuple(rejected), tuple(timings), tuple(tried))
    plan, stage, agreement = accepted[0]
    set_onednn_graph(stage.onednn_graph)
    return Optimized(stage, plan, agreement, tuple(rejected), tried=tuple(tried))
