"""The optimization vocabulary: steps, what they declare about each other, presets.

A step takes the model as built so far (a `Stage`) and returns the next one. Steps
never touch the caller's eager model: the runner hands the first step a copy unless the
step declares it makes its own, so the eager reference and other candidates stay intact.
A step never looks at which other steps ran: a conflict is declared on the step
(`Step.skipped_after`) and the runner skips it, with the reason in the stage's notes.
Adding a step or a preset is adding one entry to `STEPS` or `PRESET_STEPS` below.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from torch import nn

from torchserve_cpu.handlers.optimize.aot_load import load_stage
from torchserve_cpu.handlers.optimize.quantize import step_int8
from torchserve_cpu.handlers.optimize.steps import (
    Stage,
    StepContext,
    step_channels_last,
    step_compile,
    step_freeze,
    step_ipex,
    step_ipex_or_native,
    step_native,
    step_onednn_graph,
    step_optimize_for_inference,
    step_trace,
)


@dataclass(frozen=True)
class Step:
    """One step of the vocabulary and what it declares about the others."""

    apply: Callable[[Stage, StepContext], Stage]
    #: makes its own copy of the module, so the runner need not copy before it
    copies_module: bool = False
    #: earlier steps that, when they took effect, make this one pointless or harmful: the
    #: runner skips it and notes the reason
    skipped_after: Mapping[str, str] = field(default_factory=dict)
    #: builds its module from the archive, not from the model before it: a plan starting
    #: with it never loads the eager model
    replaces_module: bool = False


STEPS: dict[str, Step] = {
    "ipex_or_native": Step(step_ipex_or_native, copies_module=True),
    "ipex": Step(step_ipex, copies_module=True),
    "native": Step(step_native, copies_module=True),
    # ipex.optimize swaps nn.Conv2d for _IPEXConv2d with weights prepacked for oneDNN:
    # `.to(channels_last)` then raises "required rank 4 tensor", and IPEX's convs take
    # either input layout (measured in the lane: NCHW inputs lose nothing).
    "channels_last": Step(step_channels_last,
                          skipped_after={"ipex": "IPEX prepacked the weights"}),
    "onednn_graph": Step(step_onednn_graph, skipped_after={"ipex": "IPEX fuses on its own"}),
    "trace": Step(step_trace),
    "freeze": Step(step_freeze),
    # Its MKLDNN rewrites and oneDNN Graph fusion do not mix: the graph then fails at run
    # time (seen here: "vector::_M_range_check" on the first call).
    "optimize_for_inference": Step(
        step_optimize_for_inference,
        skipped_after={"onednn_graph": "oneDNN Graph fusion is on; they conflict"}),
    "compile": Step(step_compile),
    # quantizes and compiles: trace + freeze (conv nets) or compile (handlers.quantize)
    "int8": Step(step_int8, copies_module=True),
    "aot": Step(load_stage, copies_module=True, replaces_module=True),
}

PRESET_STEPS: dict[str, tuple[str, ...]] = {
    "eager": (),
    "default": ("ipex_or_native", "channels_last", "onednn_graph", "trace", "freeze",
                "optimize_for_inference"),
    # the TorchScript path without oneDNN Graph: the fallback when fusion fails
    "jit": ("ipex_or_native", "channels_last", "trace", "freeze", "optimize_for_inference"),
    "compile": ("native", "channels_last", "compile"),
    # the archive's AOTInductor package (built by model_store.build --aot / handlers.aot)
    "aot": ("aot",),
}
AUTO = "auto"  # build every preset of AUTO_ORDER, keep the fastest that agrees with eager
AUTO_ORDER = ("default", "compile", "eager")
FALLBACKS: dict[str, tuple[str, ...]] = {  # tried, in order, before eager
    "default": ("jit",),
    "aot": ("default", "jit"),
}
#: what `handler.optimize` accepts besides a list of steps
PRESET_NAMES = (*PRESET_STEPS, AUTO)


@dataclass(frozen=True)
class StepPlan:
    """One candidate: a named list of steps at one precision."""

    name: str
    steps: tuple[str, ...]
    bf16: bool = False
    int8: bool = False

    @property
    def reduced(self) -> bool:
        """Runs below fp32 precision: checked by the accuracy gate."""
        return self.bf16 or self.int8

    def describe(self) -> str:
        steps = ">".join(self.steps) or "eager"
        return f"{self.name}[{steps}]{' bf16' if self.bf16 else ''}{' int8' if self.int8 else ''}"


def replaces_model(plan: StepPlan) -> bool:
    """The plan builds its model without the eager one (it need not be loaded)."""
    return bool(plan.steps) and STEPS[plan.steps[0]].replaces_module


#: `handler.dtype: int8`: tried first, then the preset's fp32 chain
INT8_PLAN = StepPlan("quantized", ("int8",), int8=True)
#: `handler.dtype: int8` with `optimize: aot`: the archive's int8 package, before INT8_PLAN
AOT_INT8_PLAN = StepPlan("aot", ("aot",), int8=True)


def run_steps(model: nn.Module | None, plan: StepPlan, ctx: StepContext) -> Stage:
    """Apply the plan's steps in order to (a copy of) `model` (None: a plan that
    `replaces_model`)."""
    stage = Stage(module=model, bf16=plan.bf16, autocast=plan.bf16, int8=plan.int8)
    if plan.steps and not STEPS[plan.steps[0]].copies_module:
        # Steps mutate modules in place (channels-last, requires_grad): copy first.
        stage = replace(stage, module=copy.deepcopy(model).eval())
    for name in plan.steps:
        step = STEPS[name]
        conflict = next((reason for earlier, reason in step.skipped_after.items()
                         if stage.took_effect(earlier)), None)
        stage = stage.skip(name, conflict) if conflict else step.apply(stage, ctx)
    return stage
