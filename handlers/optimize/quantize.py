"""int8 for `handler.dtype: int8`: one pipeline step that picks the quantization by model kind.

- Conv nets: PyTorch's recommended CPU flow, PT2E static quantization: `torch.export`, then
  torchao's `prepare_pt2e` / `convert_pt2e` with `X86InductorQuantizer` (BatchNorm folded into
  the convs, int8 weights per output channel, uint8 activations per tensor from histogram
  observers calibrated on the archive's real inputs), then lowered by Inductor
  (`torch.compile`, freezing: the q/dq patterns become oneDNN int8 convs). If the q/dq model
  fails the accuracy gate, a sensitivity search leaves the module(s) whose quantization hurts
  most in fp32 (`quantize_conv_net`), and the note names them.
- Everything else (BERT, MiniLM): dynamic int8 of the Linear layers with torchao
  (`Int8DynamicActivationInt8WeightConfig`: int8 weights per output channel, activations
  quantized per token at run time), then `torch.compile` (inductor, freezing).

Activation range (`activation_bits`): 8 bits (0..255) where the CPU multiplies u8 x s8 with
VNNI or AMX; 7 bits (0..127, torchao's reduce_range) without: AVX2's vpmaddubsw sums two
u8 x s8 products in a saturating int16, and 2 x 255 x 127 > 32767 (measured on a Zen 3 with
8 bits: EfficientNet-Lite0 worst cosine 0.60 lowered against 0.89 for the same q/dq model).
The caller decides (the optimizer passes handlers.optimize.precision's answer for this CPU;
`default_activation_bits` asks the same decision for callers that pass none).

Why PT2E and not FX (torch.ao prepare_fx, deprecated): on the one trained conv net,
EfficientNet-Lite0, FX agreed with fp32 on 42-56% of the photos' top-1 and PT2E on 76%
(see benchmarks/results/precision/); on the random-weight ResNet-50 both were within noise
of each other (FX 6.2x, PT2E 5.9x the fp32 TorchScript graph, 1 thread, this host), FX
building faster (12 s vs 37 s). A build-time edge on a model no one serves trained does
not pay for two int8 paths: FX is gone.

Calibration runs on the archive's real inputs when it carries them (handlers.archive_inputs),
else on the example input; the note says how many inputs it saw.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from torchserve_cpu.handlers.optimize.precision import int8_choice
from torchserve_cpu.handlers.optimize.steps import (
    Stage,
    StepContext,
    StepError,
    has_convolutions,
    prepare_inputs,
    step_compile,
)
from torchserve_cpu.handlers.tasks import ModelInputs
from torchserve_cpu.launcher.host import this_cpu

log = logging.getLogger(__name__)

CALIBRATION_BATCH = 8  # rows per calibration call: observers see the set in a few calls
#: at most this many calibration rows (spread over the set). The archives ship 76 photos;
#: calibrating on all of them rather than 32 is what the measured reference row used, and
#: histogram observers cost about 2x an fp32 call per row (76 rows: a few seconds).
CALIBRATION_ROWS = 128
#: at most this many modules left in fp32 by the sensitivity search: past that the model is
#: not an int8 model any more, and the fp32 fallback is the honest answer
MAX_FP32_MODULES = 4
#: the sensitivity search ranks at most this many modules (one quantization round each)
MAX_UNITS = 24
#: rows a ranking round calibrates and judges on: the ranking needs only an order, and a
#: round on 24 rows is about a third of one on the archive's 76 (EfficientNet-Lite0: 19
#: rounds)
RANKING_ROWS = 24


def default_activation_bits() -> int:
    """What this machine's CPU computes exactly (handlers.optimize.precision): 8 with VNNI /
    AMX / arm dot products, 7 on AVX2 alone."""
    return int8_choice(this_cpu()).activation_bits or 8


def spread_rows(total: int, limit: int) -> torch.Tensor:
    """At most `limit` row indices of `total`, evenly spread."""
    return torch.arange(total) if total <= limit else torch.arange(limit) * total // limit


def calibration_batches(example: ModelInputs, rows: int = CALIBRATION_BATCH,
                        limit: int = CALIBRATION_ROWS) -> Iterator[ModelInputs]:
    """At most `limit` rows of the example, evenly spread, in slices of `rows`."""
    chosen = spread_rows(example[0].shape[0], limit)
    for start in range(0, len(chosen), rows):
        index = chosen[start:start + rows]
        yield tuple(x[index] for x in example)


def export_model(module: nn.Module, example: ModelInputs) -> torch.fx.GraphModule:
    """`module` as an exported graph whose batch dimension is dynamic (served batches vary)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    shapes = tuple({0: batch} for _ in example)
    model = copy.deepcopy(module).eval().requires_grad_(False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # An example batch of 1 would be specialized: export on at least 2 rows.
        rows = example if example[0].shape[0] > 1 else tuple(torch.cat([x, x]) for x in example)
        return torch.export.export(model, rows, dynamic_shapes=shapes).module()


def quantizer_for(activation_bits: int, fp32_modules: Sequence[str] = ()) -> object:
    """X86InductorQuantizer: per-channel int8 weights, `activation_bits`-bit uint8
    activations, the named modules (and everything inside them) left in fp32."""
    if activation_bits not in (7, 8):
        raise ValueError(f"activation_bits must be 7 or 8, got {activation_bits}")
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq

    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(
        reduce_range=activation_bits == 7))
    for name in fp32_modules:
        quantizer.set_module_name_qconfig(name, None)
    return quantizer


def quantize_pt2e(module: nn.Module, calibration: ModelInputs, activation_bits: int,
                  fp32_modules: Sequence[str] = (), channels_last: bool = True,
                  exported: torch.fx.GraphModule | None = None
                  ) -> tuple[torch.fx.GraphModule, int]:
    """(the q/dq reference model, calibration rows seen): PT2E static int8 of `module`,
    calibrated on `calibration`. The model is not lowered: torch.compile with freezing turns
    its q/dq patterns into int8 kernels. `exported` reuses an `export_model` graph."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    graph = copy.deepcopy(exported) if exported is not None else export_model(
        module, calibration)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_pt2e(graph, quantizer_for(activation_bits, fp32_modules))
        rows = 0
        with torch.no_grad():
            for batch in calibration_batches(prepare_inputs(calibration, channels_last)):
                prepared(*batch)
                rows += batch[0].shape[0]
        return convert_pt2e(prepared), rows


def quantization_units(module: nn.Module, limit: int = MAX_UNITS) -> list[str]:
    """Module names the sensitivity search tries in fp32: the Conv/Linear layers grouped by
    name prefix at the deepest level that gives at most `limit` groups (EfficientNet-Lite0:
    the stem, its 16 blocks, the head and the classifier)."""
    layers = [name for name, m in module.named_modules()
              if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear)) and name]
    best: list[str] = []
    for depth in range(1, max((n.count(".") + 1 for n in layers), default=0) + 1):
        groups = list(dict.fromkeys(".".join(n.split(".")[:depth]) for n in layers))
        if len(groups) > limit:
            break
        best = groups
    return best


#: judges a q/dq candidate's outputs on the check inputs' rows `index`: (passed, score,
#: failures); a higher score is closer to fp32 (the gate's mean cosine)
Judge = Callable[[torch.Tensor, torch.Tensor], tuple[bool, float, tuple[str, ...]]]


@dataclass(frozen=True)
class ConvNetInt8:
    """The outcome of `quantize_conv_net`."""

    module: torch.fx.GraphModule  # the q/dq reference model (lower it with torch.compile)
    fp32_modules: tuple[str, ...]  # left in fp32 by the sensitivity search, worst first
    calibrated_rows: int
    activation_bits: int
    passed: bool  # the q/dq model passed the judge (always True without one)
    #: (module, the judge's score with only it in fp32), best gain first; empty when the
    #: search did not run
    sensitivity: tuple[tuple[str, float], ...] = ()
    seconds: float = 0.0

    def note(self) -> str:
        bits = "8-bit" if self.activation_bits == 8 else "7-bit (reduce_range)"
        kept = (f"; left in fp32: {', '.join(self.fp32_modules)}" if self.fp32_modules
                else "")
        failed = "" if self.passed else "; the q/dq model still fails the gate"
        return (f"static (PT2E, X86InductorQuantizer, {bits} activations, calibrated on "
                f"{self.calibrated_rows} inputs{kept}{failed})")


def quantize_conv_net(module: nn.Module, calibration: ModelInputs, activation_bits: int,
                      judge: Judge | None = None, channels_last: bool = True,
                      check: ModelInputs | None = None,
                      max_fp32_modules: int = MAX_FP32_MODULES) -> ConvNetInt8:
    """PT2E int8 of a conv net with a per-module sensitivity check.

    Quantizes everything; when `judge` refuses the q/dq model's outputs on `check` (default:
    the calibration inputs), quantizes once per `quantization_units` module with that module
    alone in fp32, ranks the modules by how much the judge's score rises, and leaves the
    worst in fp32, one more at a time, until the judge passes or `max_fp32_modules` (and at
    most a quarter of the modules) are out.
    """
    start = time.perf_counter()
    check = calibration if check is None else check
    exported = export_model(module, calibration)

    def build(fp32: Sequence[str], rows: int | None = None) -> tuple[torch.fx.GraphModule, int]:
        inputs = calibration if rows is None else tuple(
            x[spread_rows(calibration[0].shape[0], rows)] for x in calibration)
        return quantize_pt2e(module, inputs, activation_bits, fp32, channels_last, exported)

    def verdict(model: torch.fx.GraphModule, rows: int | None = None
                ) -> tuple[bool, float, tuple[str, ...]]:
        assert judge is not None
        index = spread_rows(check[0].shape[0], rows or check[0].shape[0])
        with torch.no_grad():
            parts = [model(*batch).float() for batch in calibration_batches(
                prepare_inputs(tuple(x[index] for x in check), channels_last),
                limit=len(index))]
        return judge(torch.cat(parts), index)

    quantized, rows = build(())
    if judge is None:
        return ConvNetInt8(quantized, (), rows, activation_bits, True,
                           seconds=time.perf_counter() - start)
    passed, score, failures = verdict(quantized)
    if passed:
        return ConvNetInt8(quantized, (), rows, activation_bits, True,
                           seconds=time.perf_counter() - start)
    units = quantization_units(module)
    # At most a quarter of the model in fp32: past that it is not an int8 model any more.
    allowed = min(max_fp32_modules, len(units) // 4)
    if not allowed:
        log.info("int8: the q/dq model fails the gate (%s); %d modules, none may stay fp32",
                 "; ".join(failures), len(units))
        return ConvNetInt8(quantized, (), rows, activation_bits, False,
                           seconds=time.perf_counter() - start)
    log.info("int8: the q/dq model fails the gate (%s): ranking modules by sensitivity",
             "; ".join(failures))
    scores = []
    for unit in units:
        scores.append((unit, verdict(build((unit,), RANKING_ROWS)[0], RANKING_ROWS)[1]))
    ranking = tuple(sorted(scores, key=lambda item: -item[1]))
    log.info("int8 sensitivity (gate score on %d rows with only this module in fp32): %s",
             RANKING_ROWS, ", ".join(f"{name} {value:.4f}" for name, value in ranking))
    kept: tuple[str, ...] = ()
    for name, _ in ranking[:allowed]:
        kept = (*kept, name)
        quantized, rows = build(kept)
        passed, score, failures = verdict(quantized)
        log.info("int8 with %s in fp32: %s (score %.4f)", ", ".join(kept),
                 "passes" if passed else "; ".join(failures), score)
        if passed:
            break
    return ConvNetInt8(quantized, kept, rows, activation_bits, passed, ranking,
                       time.perf_counter() - start)


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


class FrozenCompiled:
    """A PT2E q/dq model under torch.compile whose compiles run with Inductor's global
    `freezing` flag set. Dynamo reads the global flag when it traces (to take the weights as
    constants); with only torch.compile's `options={"freezing": True}` the int8 weight
    prepack runs on fake tensors and fails (torch 2.13: UnsupportedOperatorException:
    onednn.qconv_prepack). Compiles happen at the first call and at new batch sizes, so
    every call sets the flag."""

    def __init__(self, module: torch.fx.GraphModule, options: dict[str, object]) -> None:
        self.compiled = torch.compile(module, **{"backend": "inductor", **options})

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        with torch._inductor.config.patch(freezing=True):
            return self.compiled(*inputs)


def compile_quantized(stage: Stage, ctx: StepContext) -> Stage:
    """Inductor lowering of a q/dq model: its q/dq patterns become oneDNN int8 kernels."""
    options = dict(ctx.compile_options)
    options["options"] = {"freezing": True, **dict(options.get("options") or {})}
    return stage.then("compile", FrozenCompiled(stage.module, options))


def gate_judge(module: nn.Module, inputs: ModelInputs, ctx: StepContext) -> Judge | None:
    """The optimizer's gate (ctx.gate) as a judge of q/dq outputs on `inputs` against
    `module`'s fp32 outputs (None when the gate is off)."""
    if ctx.gate is None:
        return None
    from torchserve_cpu.handlers.optimize.accuracy import compare

    with torch.no_grad():
        reference = torch.cat([module.eval()(*batch).float() for batch in
                               calibration_batches(inputs, limit=inputs[0].shape[0])])

    def judge(output: torch.Tensor, index: torch.Tensor) -> tuple[bool, float, tuple[str, ...]]:
        agreement = compare(reference[index], output, ctx.gate)
        return agreement.passed, agreement.mean_cosine, agreement.failures

    return judge


def step_int8(stage: Stage, ctx: StepContext) -> Stage:
    """Quantize the eager model to int8 and compile it for serving (see the module doc)."""
    module = stage.module
    if not isinstance(module, nn.Module) or isinstance(module, torch.jit.ScriptModule):
        raise StepError(f"int8 needs an eager nn.Module, got {type(module).__name__}")
    if has_convolutions(module):
        try:
            import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401
        except ImportError:
            raise StepError("static int8 needs torchao: pip install 'torchserve-cpu[int8]'"
                            ) from None
        wanted = ctx.channels_last if ctx.channels_last is not None else True
        calibration = ctx.calibration_inputs()
        calibration = calibration if calibration is not None else ctx.example
        bits = ctx.activation_bits or default_activation_bits()
        result = quantize_conv_net(module, calibration, bits,
                                   gate_judge(module, calibration, ctx), wanted)
        if result.fp32_modules:
            log.warning("int8: left in fp32 after the sensitivity check: %s",
                        ", ".join(result.fp32_modules))
        staged = stage.then("int8", result.module, result.note(), channels_last=wanted)
        if not result.passed:
            # Refused anyway: the gate sees the q/dq model's own figures, without a compile.
            return staged.skip("compile", "the q/dq model fails the gate")
        return compile_quantized(staged, ctx)
    quantized, how = quantize_dynamic(module)
    return step_compile(stage.then("int8", quantized, how), ctx)
