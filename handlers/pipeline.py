"""The optimization vocabulary: steps, what they declare about each other, presets.

A step takes the model as built so far (a `Stage`) and returns the next one. Steps
never touch the caller's eager model: the runner hands the first step a copy unless the
step declares it makes its own, so the eager reference and other candidates stay intact.
A step never looks at which other steps ran: a conflict is declared on the step
(`Step.skipped_after`) and the runner skips it, with the reason in the stage's notes.
Adding a step or a preset is adding one entry to `STEPS` or `PRESET_STEPS` below.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from torchserve_cpu.handlers.ipex_support import IpexStatus
from torchserve_cpu.handlers.settings import GateThresholds
from torchserve_cpu.handlers.tasks import ModelInputs


@dataclass(frozen=True)
class Stage:
    """A model part-way through a pipeline, with what running it requires."""

    module: Callable[..., torch.Tensor]
    bf16: bool = False
    channels_last: bool = False
    autocast: bool = False  # run under CPU bf16 autocast (eager and compiled graphs)
    onednn_graph: bool = False  # TorchScript graphs get oneDNN Graph (LLGA) fusion
    applied: tuple[str, ...] = ()  # steps run, in order, skipped ones included
    skipped: tuple[str, ...] = ()  # steps that ran but changed nothing
    notes: tuple[str, ...] = ()
    #: built before the worker started (aot): its first call is the call that serves, so
    #: the check makes one call and the handler no warm-up
    ahead_of_time: bool = False
    #: eager fp32's output on the example inputs, recorded when the model was built ahead
    #: of time: the check then needs no eager model
    reference: torch.Tensor | None = None

    def then(self, step: str, module: Callable[..., torch.Tensor], note: str = "",
             **changes: bool) -> Stage:
        notes = self.notes + ((f"{step}: {note}",) if note else ())
        return replace(self, module=module, applied=self.applied + (step,), notes=notes,
                       **changes)

    def skip(self, step: str, reason: str) -> Stage:
        """The same model, with `step` recorded as skipped and why."""
        skipped = replace(self, skipped=self.skipped + (step,))
        return skipped.then(step, self.module, f"skipped ({reason})")

    def took_effect(self, step: str) -> bool:
        return step in self.applied and step not in self.skipped

    @property
    def binds_thread_count(self) -> bool:
        """The built graph keeps the intra-op thread count it first ran with: oneDNN Graph
        partitions are compiled for it (measured: ResNet-50 built with 2 threads, then run
        with 1 thread on 1 core, 434 ms/img against 51 built with 1). Such a model is
        rebuilt when its worker's thread count changes."""
        return self.onednn_graph and self.took_effect("onednn_graph")


@dataclass(frozen=True)
class StepContext:
    example: ModelInputs
    ipex: IpexStatus
    channels_last: bool | None  # None: only for models with convolutions
    #: real inputs to calibrate int8 on (the archive's: handlers.archive_inputs)
    calibration: ModelInputs | None = None
    model_dir: Path | None = None  # the unpacked archive (aot packages live there)
    #: torch.compile keyword arguments from model-config.yaml's `pt2:` section
    compile_options: Mapping[str, object] = field(default_factory=dict)
    #: the gate a reduced-precision candidate will face (None: off): int8 of a conv net
    #: checks its q/dq model against it to decide which modules stay fp32
    gate: GateThresholds | None = None
    #: int8 activations: 8 bits (VNNI/AMX) or 7 (AVX2 only); None: handlers.quantize's
    #: default_activation_bits
    activation_bits: int | None = None


class StepError(RuntimeError):
    """A step cannot apply to this model (the pipeline falls back)."""


def prepare_inputs(inputs: ModelInputs, channels_last: bool) -> ModelInputs:
    if not channels_last:
        return inputs
    return tuple(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
                 for x in inputs)


@contextlib.contextmanager
def run_mode(autocast: bool) -> Iterator[None]:
    """No autograd, and bf16 autocast when the stage asks for it."""
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        yield


@contextlib.contextmanager
def quiet_jit() -> Iterator[None]:
    """torch 2.13 warns on every torch.jit call that TorchScript is deprecated."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def has_convolutions(module: object) -> bool:
    return isinstance(module, nn.Module) and any(
        isinstance(m, (nn.Conv2d, nn.Conv3d)) for m in module.modules())


def _as_module(stage: Stage, step: str) -> nn.Module:
    if not isinstance(stage.module, nn.Module):
        raise StepError(f"{step} needs an eager nn.Module, got {type(stage.module).__name__}")
    return stage.module


def native_optimize(module: nn.Module) -> tuple[nn.Module, str]:
    """What ipex.optimize does for inference that plain PyTorch can do: eval, no grad,
    and Conv+BatchNorm folding (torch.fx) for conv nets."""
    module = copy.deepcopy(module).eval().requires_grad_(False)
    if any(isinstance(m, nn.BatchNorm2d) for m in module.modules()):
        from torch.fx.experimental.optimization import fuse

        try:
            return fuse(module), "native (conv+bn folded)"
        except Exception as error:  # noqa: BLE001 - fx cannot trace every model
            return module, f"native (no conv+bn folding: {type(error).__name__})"
    return module, "native"


def step_native(stage: Stage, ctx: StepContext) -> Stage:
    module, note = native_optimize(_as_module(stage, "native"))
    return stage.then("native", module, note)


def step_ipex(stage: Stage, ctx: StepContext) -> Stage:
    if ctx.ipex.module is None:
        raise StepError(f"Intel Extension for PyTorch unusable: {ctx.ipex.reason}")
    module = copy.deepcopy(_as_module(stage, "ipex")).eval().requires_grad_(False)
    dtype = torch.bfloat16 if stage.bf16 else torch.float32
    optimized = ctx.ipex.module.optimize(module, dtype=dtype, inplace=True)
    # ipex.optimize leaves bf16 compute to autocast, as its inference recipe does.
    return stage.then("ipex", optimized, ctx.ipex.reason, autocast=stage.bf16)


def step_ipex_or_native(stage: Stage, ctx: StepContext) -> Stage:
    if ctx.ipex.usable:
        return step_ipex(stage, ctx)
    staged = step_native(stage, ctx)
    return replace(staged, notes=staged.notes + (f"ipex skipped: {ctx.ipex.reason}",))


def step_channels_last(stage: Stage, ctx: StepContext) -> Stage:
    module = _as_module(stage, "channels_last")
    wanted = ctx.channels_last if ctx.channels_last is not None else has_convolutions(module)
    if not wanted:
        return stage.skip("channels_last", "no convolutions")
    return stage.then("channels_last", module.to(memory_format=torch.channels_last),
                      channels_last=True)


def step_trace(stage: Stage, ctx: StepContext) -> Stage:
    module = _as_module(stage, "trace")
    if isinstance(module, torch.jit.ScriptModule):
        return stage.skip("trace", "already TorchScript")
    # Tracing records constants; parameters that require grad cannot be inlined under
    # autocast ("Cannot insert a Tensor that requires grad as a constant").
    module.requires_grad_(False)
    example = prepare_inputs(ctx.example, stage.channels_last)
    with quiet_jit(), run_mode(stage.bf16):
        traced = torch.jit.trace(module, example, check_trace=False, strict=False)
    # The traced graph holds the autocast casts: it runs without autocast.
    return stage.then("trace", traced, autocast=False)


def step_freeze(stage: Stage, ctx: StepContext) -> Stage:
    if not isinstance(stage.module, torch.jit.ScriptModule):
        raise StepError("freeze needs a traced model: put 'trace' before 'freeze'")
    with quiet_jit():
        return stage.then("freeze", torch.jit.freeze(stage.module.eval()))


def set_onednn_graph(enabled: bool) -> None:
    """oneDNN Graph fusion is a process-wide switch of the TorchScript executor."""
    torch.jit.enable_onednn_fusion(enabled)


def step_onednn_graph(stage: Stage, ctx: StepContext) -> Stage:
    """Let the TorchScript executor hand fusable subgraphs to oneDNN Graph (LLGA).

    Measured here, one thread, traced + frozen: ResNet-50 fp32 11.4 -> 13.5 img/s and
    bf16 18.5 -> 26.7 img/s; BERT-base fp32 3.9 -> 4.8 and bf16 7.6 -> 8.7 seq/s.
    IPEX brings its own fusion passes, so this is the native path's equivalent.
    """
    set_onednn_graph(True)
    return stage.then("onednn_graph", stage.module, onednn_graph=True)


def step_optimize_for_inference(stage: Stage, ctx: StepContext) -> Stage:
    if not isinstance(stage.module, torch.jit.ScriptModule):
        raise StepError("optimize_for_inference needs a traced model")
    with quiet_jit():
        return stage.then("optimize_for_inference",
                          torch.jit.optimize_for_inference(stage.module))


def step_compile(stage: Stage, ctx: StepContext) -> Stage:
    module = _as_module(stage, "compile")
    module.requires_grad_(False)
    # Freezing lets inductor fold weights and prepack them for oneDNN, as jit.freeze does.
    options = dict(ctx.compile_options)
    options["options"] = {"freezing": True, **dict(options.get("options") or {})}
    compiled = torch.compile(module, **{"backend": "inductor", **options})
    return stage.then("compile", compiled, autocast=stage.bf16)


def step_aot(stage: Stage, ctx: StepContext) -> Stage:
    """The archive's AOTInductor package (handlers.aot): loaded, never compiled here."""
    from torchserve_cpu.handlers.aot import load_stage  # AOTInductor's loader: only here

    return load_stage(stage, ctx)


def step_int8(stage: Stage, ctx: StepContext) -> Stage:
    """int8 by model kind (handlers.quantize): static PT2E for conv nets, dynamic for Linear;
    both compiled by Inductor."""
    from torchserve_cpu.handlers.quantize import step_int8 as quantize  # only for int8

    return quantize(stage, ctx)


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
    # quantizes and compiles (torch.compile, freezing): handlers.quantize
    "int8": Step(step_int8, copies_module=True),
    "aot": Step(step_aot, copies_module=True, replaces_module=True),
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


def run_steps(model: nn.Module | None, plan: StepPlan, ctx: StepContext) -> Stage:
    """Apply the plan's steps in order to (a copy of) `model` (None: a plan that
    `replaces_model`)."""
    stage = Stage(module=model, bf16=plan.bf16, autocast=plan.bf16)
    if plan.steps and not STEPS[plan.steps[0]].copies_module:
        # Steps mutate modules in place (channels-last, requires_grad): copy first.
        stage = replace(stage, module=copy.deepcopy(model).eval())
    for name in plan.steps:
        step = STEPS[name]
        conflict = next((reason for earlier, reason in step.skipped_after.items()
                         if stage.took_effect(earlier)), None)
        stage = stage.skip(name, conflict) if conflict else step.apply(stage, ctx)
    return stage


def call_stage(stage: Stage, inputs: ModelInputs) -> torch.Tensor:
    """Run a built stage on a batch; outputs come back as fp32."""
    with run_mode(stage.autocast):
        output = stage.module(*prepare_inputs(inputs, stage.channels_last))
    return output.float()
