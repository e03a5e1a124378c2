"""One optimization step at a time: a `Stage` (the model so far and what running it needs),
the context steps read, and the step functions themselves (native / IPEX, channels-last,
trace, freeze, oneDNN Graph, compile). Which steps make a pipeline is handlers.optimize.pipeline.
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

from torchserve_cpu.handlers.optimize.archive_inputs import CheckInputs
from torchserve_cpu.handlers.optimize.ipex_support import IpexStatus
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
    #: the inputs `reference` was made on when not the example (an int8 package's: the
    #: archive's real inputs)
    check_inputs: ModelInputs | None = None
    int8: bool = False  # the plan asks for int8 (the aot step then loads the int8 package)
    #: checked on a few inputs against a reference the build already judged in full: the
    #: gate's cosine figures only (one top-1 miss in 8 rows is 12.5%: noise, not breakage;
    #: a saturated int8 lowering shows in the cosines, 0.548 / 0.837 on AVX2)
    quick_check: bool = False

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
    #: real inputs to calibrate int8 on (the archive's: handlers.archive_inputs); None: those
    #: of `check`, read when first needed
    calibration: ModelInputs | None = None
    model_dir: Path | None = None  # the unpacked archive (aot packages live there)
    #: torch.compile keyword arguments from model-config.yaml's `pt2:` section
    compile_options: Mapping[str, object] = field(default_factory=dict)
    #: the gate a reduced-precision candidate will face (None: off): int8 of a conv net
    #: checks its q/dq model against it to decide which modules stay fp32
    gate: GateThresholds | None = None
    #: int8 activation width this CPU computes exactly (handlers.optimize.precision): 8 with
    #: VNNI/AMX/arm dot products, 7 on AVX2 alone (its 16-bit sums saturate); None: decided
    #: from this machine's CPU facts when int8 is built
    activation_bits: int | None = None
    #: where this host's int8 package of an archive without one is (handlers.archive
    #: host_cache); None: the archive's own folder
    int8_packages: Path | None = None
    #: the archive's real inputs, read lazily (handlers.optimize.archive_inputs.CheckInputs)
    check: CheckInputs | None = None

    def calibration_inputs(self) -> ModelInputs | None:
        """`calibration`, else all of `check`'s inputs (decoded now, once)."""
        if self.calibration is not None or self.check is None:
            return self.calibration
        return self.check.inputs

    def calibration_head(self, rows: int) -> ModelInputs | None:
        """The first `rows` calibration inputs, reading no more than those."""
        if self.calibration is not None or self.check is None:
            return None if self.calibration is None else tuple(
                x[:rows] for x in self.calibration)
        return self.check.head(rows)


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


def wants_channels_last(setting: bool | None, module: object) -> bool:
    """`handler.channels_last`: as set, or (unset / auto) for models with convolutions."""
    return setting if setting is not None else has_convolutions(module)


def step_channels_last(stage: Stage, ctx: StepContext) -> Stage:
    module = _as_module(stage, "channels_last")
    wanted = wants_channels_last(ctx.channels_last, module)
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


def call_stage(stage: Stage, inputs: ModelInputs) -> torch.Tensor:
    """Run a built stage on a batch; outputs come back as fp32."""
    with run_mode(stage.autocast):
        output = stage.module(*prepare_inputs(inputs, stage.channels_last))
    return output.float()
