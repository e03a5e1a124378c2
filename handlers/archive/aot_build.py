"""The `aot` backend, build side: torch.export + AOTInductor -> packages for the archive.

For fp32 (and bf16 when `handler.dtype: bf16`) this exports the model with a dynamic batch
dimension (1..handler.aot_max_batch), compiles it with AOTInductor (freezing on: weights
folded and prepacked for oneDNN; channels-last for conv nets; bf16 as autocast inside the
graph, so inputs and outputs stay fp32), loads the package back and checks it against
eager with the handler's own thresholds, then writes `aot-<dtype>.pt2` and its record
`aot-<dtype>.json` (handlers.aot_package). A bf16 package the gate refuses is left out and its
record says why; an fp32 one that disagrees fails the build.

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
    compare,
    prepare_inputs,
    thresholds_for,
    wants_channels_last,
)
from torchserve_cpu.handlers.settings import HandlerSettings
from torchserve_cpu.handlers.tasks import ModelInputs, make_task
from torchserve_cpu.launcher.host import cpuinfo

log = logging.getLogger(__name__)

BUILDER = "3"  # part of the cache key: bump when what a build makes changes
EXPORT_BATCH = 2  # export specialises a dimension it sees at size 1: trace at 2
CHECK_BATCHES = (1, 3, 8)  # besides the example's (up to aot_max_batch): checked at build


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


def compile_package(exported: torch.export.ExportedProgram, path: Path,
                    options: Mapping[str, object]) -> None:
    """AOTInductor into `path`. Freezing needs grad off: inductor applies it only when
    `not torch.is_grad_enabled()` (compile_fx), silently, else weights stay graph inputs."""
    with torch.no_grad(), conv_weights_prepacked():
        torch._inductor.aoti_compile_and_package(
            exported, package_path=str(path), inductor_configs={"freezing": True, **options})


def check_batches(settings: HandlerSettings) -> list[int]:
    sizes = {settings.example_batch_size, *CHECK_BATCHES}
    return sorted(size for size in sizes if size <= settings.aot_max_batch)


def build_one(eager: nn.Module, settings: HandlerSettings, task: object, dtype: str,
              out_dir: Path) -> Built:
    """Export, compile, check one precision; files written into `out_dir`."""
    started = time.perf_counter()
    bf16 = dtype == "bf16"
    channels_last = wants_channels_last(settings.channels_last, eager)
    model = copy.deepcopy(eager).eval().requires_grad_(False)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    module = ServingModule(model, bf16).eval()
    options = dict(settings.compile_options.get("options") or {})
    package = out_dir / package_name(dtype)
    exported = export(module, prepare_inputs(task.example_inputs(EXPORT_BATCH), channels_last),
                      settings.aot_max_batch)
    compile_package(exported, package, options)
    compiled = load_package(package)
    thresholds = thresholds_for(StepPlan("aot", ("aot",), bf16), settings, task.classifies)
    checked: dict[str, object] = {}
    failures: list[str] = []
    for batch in check_batches(settings):
        inputs = task.example_inputs(batch)
        with torch.no_grad():
            expected = eager(*inputs).float()
            output = first_output(compiled(*prepare_inputs(inputs, channels_last)))
        agreement = compare(expected, output, thresholds)
        checked[f"batch {batch}"] = {"cosine": round(agreement.cosine, 6),
                                     "max_abs_diff": float(f"{agreement.max_abs_diff:.3g}")}
        failures += [f"batch {batch}: {failure}" for failure in agreement.failures]
    example = task.example_inputs(settings.example_batch_size)
    with torch.no_grad():
        reference = eager(*example).float()
    refused = "; ".join(failures) or None
    if refused and not bf16:
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
        build_seconds=round(time.perf_counter() - started, 1))
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
                   cache_dir: Path | None = None, name: str = "model") -> list[Built]:
    """The packages for an unpacked archive (`model_dir` + its manifest + model-config).

    fp32 always; bf16 as well when the config asks for it. ValueError for a config that
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
    built = []
    for dtype in ("fp32", "bf16") if settings.dtype == "bf16" else ("fp32",):
        key = cache_key(model_dir, manifest, settings, example, dtype)
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
            one = build_one(eager, settings, task, dtype, Path(scratch))
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


def staged_archive(model_file: Path, serialized_file: Path, extra_files: Sequence[Path],
                   into: Path) -> dict[str, object]:
    """What TorchServe would unpack, as links in `into`; returns its manifest."""
    for path in (model_file, serialized_file, *extra_files):
        (into / path.name).symlink_to(path.resolve())
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
