"""int8 for `handler.dtype: int8`: one pipeline step that picks the quantization by model kind.

- Conv nets: post-training static quantization in FX graph mode (`torch.ao` prepare_fx /
  convert_fx: per-channel int8 weights, calibrated int8 activations), then channels-last,
  `torch.jit.trace` and `freeze`, as the fp32 default pipeline ends.
- Everything else (BERT, MiniLM): dynamic int8 of the Linear layers with torchao
  (`Int8DynamicActivationInt8WeightConfig`: int8 weights per output channel, activations
  quantized per token at run time), then `torch.compile` (inductor, freezing).

Why these flows (measured on this 2-core AVX512-VNNI host, 1 thread, batch 1, as a worker
serves; ratios within one run, the machine is shared):
- ResNet-50: FX + trace + freeze 6.2x the fp32 trace+freeze graph; torchao's PT2E flow
  (export, X86InductorQuantizer, inductor) 5.9x, with a 3x longer build (37 s vs 12 s) and
  torchao at run time. Same speed, cheaper build: FX. EfficientNet-Lite0 agrees poorly with
  fp32 either way (top-1 42-56% FX, 76% PT2E on the photo set): the gate refuses both.
- MiniLM: `torch.ao` quantize_dynamic (per-tensor activations) + trace + freeze is 4.1x fp32
  but its embeddings drift (cosine 0.95 mean, 0.92 worst over 50 sentences; per-channel
  weights only reach 0.96): attention outputs have outlier channels. torchao's per-token
  activations keep cosine 0.997 (worst 0.996) at 3.4x.

Calibration runs on the archive's real inputs when it carries them (handlers.archive_inputs),
else on the example input; the note says how many inputs it saw.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from torchserve_cpu.handlers.optimize.steps import (
    Stage,
    StepContext,
    StepError,
    has_convolutions,
    prepare_inputs,
    quiet_jit,
    step_compile,
    step_freeze,
    step_trace,
)
from torchserve_cpu.handlers.tasks import ModelInputs

CALIBRATION_BATCH = 8  # rows per calibration call: observers see the set in a few calls
#: at most this many calibration rows (spread over the set): histogram observers make each
#: calibration call several times an inference call, and a worker must start within
#: TorchServe's responseTimeout
CALIBRATION_ROWS = 32


def int8_engine() -> str:
    """The quantized engine for this CPU.

    With VNNI (AVX512-VNNI, AVX-VNNI, AMX) oneDNN's int8 kernels take full 8-bit activations;
    the x86 engine's default qconfig keeps 7 (reduce_range) so that non-VNNI kernels cannot
    overflow their 16-bit intermediate sums. Measured on EfficientNet-Lite0: top-1 agreement
    56% (onednn) vs 42% (x86), and onednn slightly faster on ResNet-50."""
    return "onednn" if torch.cpu._is_vnni_supported() else "x86"


def calibration_batches(example: ModelInputs, rows: int = CALIBRATION_BATCH,
                        limit: int = CALIBRATION_ROWS) -> Iterator[ModelInputs]:
    """At most `limit` rows of the example, evenly spread, in slices of `rows`."""
    total = example[0].shape[0]
    chosen = torch.arange(total) if total <= limit else torch.arange(limit) * total // limit
    for start in range(0, len(chosen), rows):
        index = chosen[start:start + rows]
        yield tuple(x[index] for x in example)


def quantize_static(module: nn.Module, example: ModelInputs, channels_last: bool
                    ) -> tuple[nn.Module, str]:
    """Post-training static int8 (FX graph mode), calibrated on `example`."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.backend_config import get_onednn_backend_config
    from torch.ao.quantization.backend_config.x86 import get_x86_backend_config

    with warnings.catch_warnings():  # torch.ao.quantization is deprecated for torchao
        warnings.simplefilter("ignore")
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    engine = int8_engine()
    # The engine is process-wide; the packed weights are made for it at convert time.
    torch.backends.quantized.engine = engine
    backend = get_onednn_backend_config() if engine == "onednn" else get_x86_backend_config()
    model = copy.deepcopy(module).eval().requires_grad_(False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(model, get_default_qconfig_mapping(engine), example,
                              backend_config=backend)
        rows = 0
        with torch.no_grad():
            for batch in calibration_batches(prepare_inputs(example, channels_last)):
                prepared(*batch)
                rows += batch[0].shape[0]
        quantized = convert_fx(prepared, backend_config=backend)
    return quantized, f"static (FX, {engine} engine, calibrated on {rows} inputs)"


def quantize_dynamic(module: nn.Module) -> tuple[nn.Module, str]:
    """Dynamic int8 of every nn.Linear with torchao (the `int8` extra)."""
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        raise StepError("dynamic int8 needs torchao: pip install 'torchserve-cpu[int8]'"
                        ) from None
    model = copy.deepcopy(module).eval().requires_grad_(False)
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise StepError("no nn.Linear layers to quantize")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_(model, Int8DynamicActivationInt8WeightConfig())
    return model, "dynamic (torchao, int8 weights per channel, activations per token)"


def step_int8(stage: Stage, ctx: StepContext) -> Stage:
    """Quantize the eager model to int8 and compile it for serving (see the module doc)."""
    module = stage.module
    if not isinstance(module, nn.Module) or isinstance(module, torch.jit.ScriptModule):
        raise StepError(f"int8 needs an eager nn.Module, got {type(module).__name__}")
    if has_convolutions(module):
        wanted = ctx.channels_last if ctx.channels_last is not None else True
        calibration = ctx.calibration if ctx.calibration is not None else ctx.example
        with quiet_jit():
            quantized, how = quantize_static(module, calibration, wanted)
        staged = stage.then("int8", quantized, how, channels_last=wanted)
        return step_freeze(step_trace(staged, ctx), ctx)
    quantized, how = quantize_dynamic(module)
    return step_compile(stage.then("int8", quantized, how), ctx)
