"""The `aot` backend, build side: torch.export + AOTInductor -> packages for the archive.

For fp32 (bf16 when `handler.dtype: bf16`, int8 when `int8`, int8 and bf16 where this CPU
runs them when `auto`) this exports the model with a dynamic batch
dimension (1..handler.aot_max_batch), compiles it with AOTInductor (freezing on: weights
folded and prepacked for oneDNN; channels-last for conv nets; bf16 as autocast inside the
graph, so inputs and outputs stay fp32), loads the package back and checks it against
eager with the handler's own thresholds, then writes `aot-<dtype>.pt2` and its record
`aot-<dtype>.json` (handlers.aot_package). A bf16 package the gate refuses is left out and its
record says why; an fp32 one that disagrees fails the build.

int8 (conv nets): quantized as the worker would (handlers.optimize.quantize_conv_net:
PT2E, calibrated on the archive's `handler.calibration` inputs, the sensitivity search
leaving the worst modules fp32, activation width from this CPU's precision decision), the
q/dq model exported and compiled by AOTInductor the same way, then checked against eager
on those inputs with the handler's gate. Its record names the activation width, the
modules left fp32 and the int8 dot-product flags an 8-bit package needs. A worker then
loads it in well under a second instead of quantizing for 22-149 s per start
(benchmarks/results/precision/). Models without convolutions (BERT, MiniLM) get the
worker's dynamic int8 (torchao: int8 weights per channel, activations quantized per token
inside the graph) exported and compiled the same way, checked on the archive's inputs
(MiniLM: worst cosine 0.993, a 60 MB package loaded in 0.06 s instead of quantizing and
compiling for 15-17 s per start).

    torchserve-cpu aot build --model-file mynet.py \\
        --serialized-file mynet.pt --config-file model-config.yaml -o aot/
    torch-model-archiver ... --extra-files aot/aot-fp32.pt2,aot/aot-fp32.json

Compiling takes 15-40 s per model and precision on 2 cores and needs a C++ compiler;
`cache_dir` keeps packages keyed by model, weights, settings, torch build and CPU flags.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from torchserve_cpu.handlers.aot_package import (
    SCHEMA,
    InputSpec,
    PackageRecord,
    Runtime,
    example_digest,
    first_output,
    isa_flags,
    load_package,
    package_name,
    record_name,
)
from torchserve_cpu.handlers.loading import load_model
from torchserve_cpu.handlers.model_config import settings_from_config
from torchserve_cpu.handlers.optimize import (
    StepPlan,
    check_inputs,
    compare,
    decide,
    default_activation_bits,
    has_convolutions,
    prepare_inputs,
    quantize_conv_net,
    quantize_dynamic,
    thresholds_for,
    wants_channels_last,
)
from torchserve_cpu.handlers.settings import HandlerSettings
from torchserve_cpu.handlers.tasks import ModelInputs, make_task
from torchserve_cpu.launcher.host import ARM_INT8_DOT, X86_INT8_DOT, CpuFacts, cpuinfo, this_cpu

log = logging.getLogger(__name__)

BUILDER = "6"  # part of the cache key: bump when what a build makes changes
EXPORT_BATCH = 2  # export specialises a dimension it sees at size 1: trace at 2
CHECK_BATCHES = (1, 3, 8)  # besides the example's (up to aot_max_batch): checked at build
#: an int8 record keeps eager's outputs on this many of the archive's inputs: the worker's
#: quick check (the build judged all of them). Checking all 76 photos took a worker 3.0 s
#: of a 3.4 s start (EfficientNet-Lite0, 2 shared cores); 8 rows are one call.
QUICK_CHECK_ROWS = 8


class ServingModule(nn.Module):
    """Tensors in, one fp32 tensor out; bf16 compute stays inside the graph.

    The autocast region is traced into the exported graph as explicit casts, so the
    package's weights and the worker's inputs stay fp32 and nothing runs under autocast
    at serve time (measured: the fastest of the bf16 variants tried, see the README)."""

    def __init__(self, model: nn.Module, bf16: bool) -> None:
        super().__init__()
        self.model = model
        self.bf16 = bf16

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            output = self.model(*inputs)
        return output.float()


@dataclass(frozen=True)
class Built:
    """One precision's outcome: the files to archive and the record written."""

    files: tuple[Path, ...]
    record: PackageRecord
    cached: bool


def export(module: nn.Module, inputs: ModelInputs, max_batch: int) -> torch.export.ExportedProgram:
    """torch.export with dimension 0 of every input dynamic in 1..max_batch."""
    with torch.no_grad():
        if max_batch == 1:
            return torch.export.export(module, tuple(x[:1] for x in inputs), strict=False)
        batch = torch.export.Dim("batch", min=1, max=max_batch)
        # forward(*inputs): its one argument is the tuple of inputs
        shapes = (tuple({0: batch} for _ in inputs),)
        return torch.export.export(module, inputs, dynamic_shapes=shapes, strict=False)


@contextlib.contextmanager
def conv_weights_prepacked() -> Iterator[None]:
    """Let inductor's freezing prepack convolution weights for oneDNN with a dynamic batch.

    With a symbolic batch size its weight-pack pass leaves conv weights plain ("For
    dynamic shape case, we need to pack weight in runtime", fx_passes/mkldnn_fusion.py,
    torch 2.13), so every call reorders every conv weight into oneDNN's blocked layout.
    Here the pass packs them for the example's size hint, as it already does for Linear
    weights; oneDNN's conv reorders at run time only if another batch size wants another
    layout. Measured on ResNet-50 fp32 (2 threads, same process, alternating): 1.33x at
    batch 1, 1.48x at batch 8, same outputs. The archive-time check runs the package at
    several batch sizes. Without those internals (another torch), nothing changes.
    """
    try:
        from torch._inductor.fx_passes import mkldnn_fusion
        from torch.fx.experimental.symbolic_shapes import optimization_hint

        device_op = mkldnn_fusion.CpuMkldnnDeviceOp
        has_free_symbols = mkldnn_fusion.has_free_symbols
        pack = device_op.pack_conv_weight
    except (ImportError, AttributeError):
        yield
        return

    def conv_sizes_are_static(value: object) -> bool:
        # the pass asks this of the conv input's 4-d size; other callers keep the answer
        if isinstance(value, (torch.Size, list, tuple)) and len(value) == 4:
            return False
        return has_free_symbols(value)

    def pack_for_hint(self, graph, is_transposed, weight, constant_args, input_size):
        sizes = [int(optimization_hint(s)) if isinstance(s, torch.SymInt) else s
                 for s in input_size]
        return pack(self, graph, is_transposed, weight, constant_args, sizes)

    mkldnn_fusion.has_free_symbols = conv_sizes_are_static
    device_op.pack_conv_weight = pack_for_hint
    try:
        yield
    finally:
        mkldnn_fusion.has_free_symbols = has_free_symbols
        device_op.pack_conv_weight = pack


@contextlib.contextmanager
def int8_conv_weights_prepacked() -> Iterator[None]:
    """The same for int8 convs: with a symbolic batch, inductor's int8 conv lowering
    prepacks weights without the input shape (`if has_free_symbols(x_shape): x_shape =
    None`, fx_passes/quantization.py, torch 2.13). Here it gets the example's size hint.
    Measured on EfficientNet-Lite0 8-bit (1 thread, batch 8, same process): 164-170 img/s
    for a static-batch package against 84-86 for the dynamic one; with this patch the
    dynamic package runs 1.9-2.0x its unpatched self, outputs within cosine 0.9995 of
    the q/dq model at batch 1, 3 and 8 as before. Without those internals, nothing
    changes."""
    try:
        from torch._inductor.fx_passes import quantization
        from torch.fx.experimental.symbolic_shapes import optimization_hint

        has_free_symbols = quantization.has_free_symbols
        prepack = torch.ops.onednn.qconv_prepack
    except (ImportError, AttributeError):
        yield
        return
    call_function = torch.fx.Graph.call_function

    def conv_sizes_are_static(value: object) -> bool:
        if isinstance(value, (torch.Size, list, tuple)) and len(value) == 4:
            return False
        return has_free_symbols(value)

    def hinted(self, target, args=None, kwargs=None, *more, **named):  # noqa: ANN001
        if target is prepack and args and args[-1] is not None:
            sizes = [int(optimization_hint(v)) if isinstance(v, torch.SymInt) else v
                     for v in args[-1]]
            args = (*args[:-1], sizes)
        return call_function(self, target, args, kwargs, *more, **named)

    quantization.has_free_symbols = conv_sizes_are_static
    torch.fx.Graph.call_function = hinted
    try:
        yield
    finally:
        quantization.has_free_symbols = has_free_symbols
        torch.fx.Graph.call_function = call_function


def compile_package(exported: torch.export.ExportedProgram, path: Path,
                    options: Mapping[str, object]) -> None:
    """AOTInductor into `path`. Freezing needs grad off: inductor applies it only when
    `not torch.is_grad_enabled()` (compile_fx), silently, else weights stay graph inputs."""
    with torch.no_grad(), conv_weights_prepacked(), int8_conv_weights_prepacked():
        torch._inductor.aoti_compile_and_package(
            exported, package_path=str(path), inductor_configs={"freezing": True, **options})


def check_batches(settings: HandlerSettings) -> list[int]:
    sizes = {settings.example_batch_size, *CHECK_BATCHES}
    return sorted(size for size in sizes if size <= settings.aot_max_batch)


def int8_module(eager: nn.Module, calibration: ModelInputs, channels_last: bool,
                judge_thresholds: object) -> tuple[nn.Module, dict[str, object]]:
    """The int8 model the worker's int8 step would build (conv nets: the PT2E q/dq model,
    same calibration, same gate for the sensitivity search; others: dynamic int8), and what
    the record says of it."""
    if not has_convolutions(eager):
        started = time.perf_counter()
        model, how = quantize_dynamic(eager)
        return model, {"activation_bits": None, "fp32_modules": (), "int8_flags": (),
                       "note": how, "quantize_seconds": round(time.perf_counter() - started, 1)}
    with torch.no_grad():  # the sensitivity search's reference
        expected = torch.cat([eager(*tuple(x[i:i + 8] for x in calibration)).float()
                              for i in range(0, calibration[0].shape[0], 8)])

    def judge(output: torch.Tensor, index: torch.Tensor) -> tuple[bool, float, tuple[str, ...]]:
        agreement = compare(expected[index], output, judge_thresholds)
        return agreement.passed, agreement.mean_cosine, agreement.failures

    result = quantize_conv_net(eager, calibration, default_activation_bits(), judge,
                               channels_last)
    here = this_cpu().flags
    facts = {"activation_bits": result.activation_bits, "fp32_modules": result.fp32_modules,
             "int8_flags": tuple(f for f in (*X86_INT8_DOT, *ARM_INT8_DOT) if f in here)
             if result.activation_bits == 8 else (),
             "note": result.note(), "quantize_seconds": round(result.seconds, 1)}
    return result.module, facts


def build_one(eager: nn.Module, settings: HandlerSettings, task: object, dtype: str,
              out_dir: Path, calibration: ModelInputs | None = None) -> Built:
    """Export, compile, check one precision; files written into `out_dir`.

    int8 quantizes on `calibration` (the archive's real inputs, else the example) and is
    checked on it, since the gate's top-1 means nothing on random example pixels; its
    record's reference is eager's output on the first QUICK_CHECK_ROWS of them."""
    started = time.perf_counter()
    bf16, int8 = dtype == "bf16", dtype == "int8"
    channels_last = wants_channels_last(settings.channels_last, eager)
    thresholds = thresholds_for(StepPlan("aot", ("aot",), bf16, int8), settings,
                                task.classifies)
    int8_facts: dict[str, object] = {}
    if int8:
        calibration = calibration if calibration is not None else task.example_inputs(
            settings.example_batch_size)
        model, int8_facts = int8_module(eager, calibration, channels_last, thresholds)
    else:
        model = copy.deepcopy(eager).eval().requires_grad_(False)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
    module = ServingModule(model, bf16)
    module.training = False  # not .eval(): a converted PT2E graph refuses it (already eval)
    options = dict(settings.compile_options.get("options") or {})
    package = out_dir / package_name(dtype)
    exported = export(module, prepare_inputs(task.example_inputs(EXPORT_BATCH), channels_last),
                      settings.aot_max_batch)
    compile_package(exported, package, options)
    compiled = load_package(package)
    checked: dict[str, object] = {}
    failures: list[str] = []
    check_sets = ([("calibration", calibration)] if int8 else
                  [(f"batch {b}", task.example_inputs(b)) for b in check_batches(settings)])
    for name, inputs in check_sets:
        with torch.no_grad():
            expected = eager(*inputs).float()
            output = torch.cat([first_output(compiled(*prepare_inputs(
                tuple(x[i:i + settings.aot_max_batch] for x in inputs), channels_last)))
                for i in range(0, inputs[0].shape[0], settings.aot_max_batch)])
        agreement = compare(expected, output, thresholds)
        checked[name] = {"cosine": round(agreement.cosine, 6),
                         "max_abs_diff": float(f"{agreement.max_abs_diff:.3g}"),
                         "mean_cosine": round(agreement.mean_cosine, 6),
                         "rows": inputs[0].shape[0]}
        failures += [f"{name}: {failure}" for failure in agreement.failures]
    if int8_facts:
        checked["int8"] = {key: int8_facts[key] for key in ("note", "quantize_seconds")}
    example = (tuple(x[:QUICK_CHECK_ROWS] for x in calibration) if int8
               else task.example_inputs(settings.example_batch_size))
    with torch.no_grad():
        reference = eager(*example).float()
    refused = "; ".join(failures) or None
    if refused and dtype == "fp32":
        raise RuntimeError(f"the AOTInductor fp32 package disagrees with eager: {refused}")
    runtime = Runtime.here()
    record = PackageRecord(
        dtype=dtype, torch=runtime.torch, torch_git=runtime.torch_git,
        cpu_flags=isa_flags(runtime.cpu_flags), build_cpu=cpuinfo().get("model name", "unknown"),
        vec_isa=vector_isa(), min_batch=1, max_batch=settings.aot_max_batch,
        inputs=tuple(InputSpec(tuple(x.shape[1:]), str(x.dtype).removeprefix("torch."),
                               channels_last and x.dim() == 4) for x in example),
        example_digest=example_digest(example),
        reference=tuple(tuple(float(v) for v in row) for row in reference.reshape(
            reference.shape[0], -1)),
        checked=checked, refused=refused,
        package_bytes=0 if refused else package.stat().st_size,
        inductor_options={"freezing": True, **options},
        build_seconds=round(time.perf_counter() - started, 1),
        activation_bits=int8_facts.get("activation_bits"),  # type: ignore[arg-type]
        fp32_modules=tuple(int8_facts.get("fp32_modules", ())),  # type: ignore[arg-type]
        int8_flags=tuple(int8_facts.get("int8_flags", ())),  # type: ignore[arg-type]
        reference_inputs="calibration" if int8 else "example")
    if refused:
        log.warning("aot: %s package refused by the accuracy gate: %s", dtype, refused)
        package.unlink()
    (out_dir / record_name(dtype)).write_text(record.to_json())
    files = (out_dir / record_name(dtype),) if refused else (package, out_dir / record_name(dtype))
    return Built(files, record, cached=False)


def vector_isa() -> str:
    """Inductor's vector ISA for this CPU (it compiles a probe: build time only)."""
    try:
        from torch._inductor.cpu_vec_isa import pick_vec_isa

        return str(pick_vec_isa()) or "none"
    except Exception as error:  # noqa: BLE001 - informative only
        return f"unknown ({type(error).__name__})"


def cache_key(model_dir: Path, manifest: Mapping[str, object], settings: HandlerSettings,
              example: ModelInputs, dtype: str) -> str:
    """Everything a package depends on: model file and weights, the settings that shape
    it, the example (the reference), the torch build and this CPU's flags."""
    runtime = Runtime.here()
    digest = hashlib.sha256()
    parts = [SCHEMA, BUILDER, dtype, runtime.torch, runtime.torch_git,
             " ".join(isa_flags(runtime.cpu_flags)), repr(settings.aot_max_batch),
             repr(settings.channels_last), repr(sorted(dict(settings.compile_options).items())),
             repr(settings.gate), repr(settings.example_batch_size), example_digest(example)]
    digest.update("\n".join(parts).encode())
    model = manifest.get("model", {})
    for key in ("modelFile", "serializedFile"):
        name = model.get(key) if isinstance(model, Mapping) else None
        if name:
            with (model_dir / str(name)).open("rb") as file:
                for block in iter(lambda: file.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:20]


def _place(source: Path, target: Path) -> None:
    """Hard link when on the same file system (packages are large), else copy."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def build_packages(model_dir: Path, manifest: Mapping[str, object],
                   config: Mapping[str, object], out_dir: Path,
                   cache_dir: Path | None = None, name: str = "model",
                   only: tuple[str, ...] | None = None) -> list[Built]:
    """The packages for an unpacked archive (`model_dir` + its manifest + model-config).

    fp32 always; bf16 and int8 as `package_dtypes` says (`only`: of those, these; the
    host cache builds int8 alone). ValueError for a config that
    cannot build (named key), RuntimeError when the fp32 package disagrees with eager."""
    settings = settings_from_config(config)
    batch_size = config.get("batchSize", 1)
    if isinstance(batch_size, int) and batch_size > settings.aot_max_batch:
        raise ValueError(f"handler.aot_max_batch: {settings.aot_max_batch} is below the "
                         f"archive's batchSize {batch_size}; raise it to at least that")
    if not (manifest.get("model") or {}).get("modelFile"):  # type: ignore[union-attr]
        raise ValueError("aot needs the model file and its weights: a TorchScript archive "
                         "cannot be exported")
    task = make_task(settings, model_dir)
    example = task.example_inputs(settings.example_batch_size)
    eager = load_model(model_dir, dict(manifest)).requires_grad_(False)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
    calibration = None
    dtypes = tuple(d for d in package_dtypes(settings.dtype) if only is None or d in only)
    if "int8" in dtypes:
        check = check_inputs(settings, task, model_dir, example)
        calibration = check.inputs if check is not None else example
    built = []
    for dtype in dtypes:
        key = cache_key(model_dir, manifest, settings,
                        calibration if dtype == "int8" else example, dtype)
        slot = cache_dir / f"{name}-{dtype}-torch{torch.__version__}-{key}" if cache_dir else None
        if slot is not None and (slot / record_name(dtype)).exists():
            record = PackageRecord.from_json((slot / record_name(dtype)).read_text())
            files = [slot / record_name(dtype)] + ([] if record.refused
                                                   else [slot / package_name(dtype)])
            for path in files:
                _place(path, out_dir / path.name)
            built.append(Built(tuple(out_dir / p.name for p in files), record, cached=True))
            continue
        with tempfile.TemporaryDirectory(dir=cache_dir if cache_dir else None) as scratch:
            one = build_one(eager, settings, task, dtype, Path(scratch), calibration)
            if slot is not None:
                slot.parent.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(slot, ignore_errors=True)
                Path(scratch).rename(slot)
                slot.chmod(0o755)  # mkdtemp made it private
                Path(scratch).mkdir()  # for TemporaryDirectory's clean-up
                source = slot
            else:
                source = Path(scratch)
            for path in one.files:
                _place(source / path.name, out_dir / path.name)
            built.append(replace(one, files=tuple(out_dir / p.name for p in one.files)))
    return built


def package_dtypes(requested: str, cpu: CpuFacts | None = None) -> tuple[str, ...]:
    """The precisions to package: fp32 always; bf16 and int8 as `requested` asks, and for
    `auto` only what this CPU runs natively (it is also where the package is checked)."""
    if requested == "auto":
        wanted = [c.dtype for c in decide("auto", cpu or this_cpu()).candidates]
    else:
        wanted = [requested]
    return tuple(d for d in ("fp32", "int8", "bf16") if d == "fp32" or d in wanted)


def _link_tree(source: Path, target: Path) -> None:
    """Folders made, files linked: the handler refuses inputs that resolve outside the
    archive (handlers.optimize.archive_inputs), so a folder must not be a link."""
    if source.is_dir():
        target.mkdir()
        for item in sorted(source.iterdir()):
            _link_tree(item, target / item.name)
    else:
        target.symlink_to(source.resolve())


def staged_archive(model_file: Path, serialized_file: Path, extra_files: Sequence[Path],
                   into: Path) -> dict[str, object]:
    """What TorchServe would unpack, as links in `into`; returns its manifest. An extra
    folder's contents land at the top, as torch-model-archiver copies them (the model
    store's `inputs/` holds the `calibration/` folder that int8 calibrates on)."""
    for path in (model_file, serialized_file, *extra_files):
        for item in sorted(path.iterdir()) if path.is_dir() else (path,):
            _link_tree(item, into / item.name)
    return {"model": {"modelFile": model_file.name, "serializedFile": serialized_file.name}}


def build_from_files(model_file: Path, serialized_file: Path, config: Mapping[str, object],
                     extra_files: Sequence[Path], out_dir: Path,
                     cache_dir: Path | None) -> list[Built]:
    """Packages for the files a user would give torch-model-archiver (`torchserve-cpu aot
    build`): staged as TorchServe would unpack them, then built into `out_dir`."""
    with tempfile.TemporaryDirectory() as staging:
        manifest = staged_archive(model_file, serialized_file, extra_files, Path(staging))
        return build_packages(Path(staging), manifest, config, out_dir, cache_dir,
                              model_file.stem)
