"""The `aot` backend, serve side: check an archive's AOTInductor package, load it, call it.

A package (`aot-<dtype>.pt2`) is made when the archive is built (handlers.aot_build): the
model exported with a dynamic batch dimension and compiled by AOTInductor, weights inside.
Beside it, `aot-<dtype>.json` (a `PackageRecord`) says what it needs to run: the torch
build, the CPU flags of the build host, the input layout, and eager's output on the
handler's example input. The worker reads the record, refuses (raising `StepError`, so the
optimizer falls back to the next pipeline with the reason logged) what cannot run here,
and loads the rest: no tracing, no export, no C++ compiler.

    python -m torchserve_cpu.handlers.aot build --model-file m.py --serialized-file m.pt \\
        --config-file model-config.yaml -o aot/          # see handlers.aot_build
    python -m torchserve_cpu.handlers.aot inspect aot/aot-fp32.json   # can it run here?
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from torchserve_cpu.handlers.pipeline import Stage, StepContext, StepError
from torchserve_cpu.handlers.tasks import ModelInputs
from torchserve_cpu.launcher.host import cpuinfo

SCHEMA = "torchserve-cpu-aot/1"  # bump when the meaning of a record's fields changes

# CPU flags (as /proc/cpuinfo names them) that code compiled with -march=native may use:
# inductor builds AOT kernels for the build host, so every one it had must be here too.
ISA_FLAGS = (
    "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "avx_vnni",
    "avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "avx512ifma", "avx512vbmi", "avx512_vbmi2",
    "avx512_bitalg", "avx512_vpopcntdq", "avx512_vp2intersect", "amx_tile", "amx_bf16",
    "amx_int8", "asimd", "sve", "sve2", "bf16", "i8mm",
)  # fmt: skip


def package_name(dtype: str) -> str:
    """The package's file name inside the archive."""
    return f"aot-{dtype}.pt2"


def record_name(dtype: str) -> str:
    """The record's file name, beside the package."""
    return f"aot-{dtype}.json"


@dataclass(frozen=True)
class InputSpec:
    """One positional input: its shape after the batch dimension, dtype and layout."""

    shape: tuple[int, ...]
    dtype: str
    channels_last: bool = False


@dataclass(frozen=True)
class PackageRecord:
    """What a package needs to run and what it was checked against, as built."""

    dtype: str  # fp32 | bf16 (bf16 runs inside the graph; inputs and output stay fp32)
    torch: str  # torch.__version__ of the build: the .so links libtorch's C++ ABI
    torch_git: str
    cpu_flags: tuple[str, ...]  # ISA_FLAGS of the build host (-march=native)
    build_cpu: str
    vec_isa: str  # inductor's vector ISA for the kernels, for people
    min_batch: int
    max_batch: int
    inputs: tuple[InputSpec, ...]
    example_digest: str  # of the handler's example inputs the reference was made from
    reference: tuple[tuple[float, ...], ...]  # eager fp32 output on those inputs
    checked: dict[str, object] = field(default_factory=dict)  # archive-time gate results
    refused: str | None = None  # the archive-time accuracy gate said no: no package
    package_bytes: int = 0
    inductor_options: dict[str, object] = field(default_factory=dict)
    build_seconds: float = 0.0
    schema: str = SCHEMA

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> PackageRecord:
        """Raises ValueError for a record this version cannot read."""
        try:
            data = json.loads(text)
            names = {f.name for f in fields(cls)}
            data = {key: value for key, value in data.items() if key in names}
            data["cpu_flags"] = tuple(data["cpu_flags"])
            data["inputs"] = tuple(InputSpec(tuple(i["shape"]), i["dtype"],
                                             bool(i.get("channels_last")))
                                   for i in data["inputs"])
            data["reference"] = tuple(tuple(row) for row in data["reference"])
            return cls(**data)
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"unreadable aot record: {type(error).__name__}: {error}") from None


# -- facts about this process and host ---------------------------------------------------


@dataclass(frozen=True)
class Runtime:
    """What a package is checked against: this torch build and this CPU."""

    torch: str
    torch_git: str
    cpu_flags: frozenset[str]

    @classmethod
    def here(cls) -> Runtime:
        return cls(torch.__version__, torch.version.git_version or "",
                   frozenset(cpuinfo().get("flags", "").split()))


def isa_flags(flags: frozenset[str] | set[str]) -> tuple[str, ...]:
    """The ISA flags among a CPU's flags that generated code may rely on."""
    return tuple(flag for flag in ISA_FLAGS if flag in flags)


def incompatibilities(record: PackageRecord, runtime: Runtime) -> list[str]:
    """Why the package cannot run with `runtime` (empty: it can)."""
    problems = []
    if record.schema != SCHEMA:
        problems.append(f"record schema {record.schema!r}, this handler reads {SCHEMA!r}")
    if record.torch != runtime.torch:
        problems.append(f"built for torch {record.torch}, running {runtime.torch}")
    elif record.torch_git and runtime.torch_git and record.torch_git != runtime.torch_git:
        problems.append(f"built for torch commit {record.torch_git[:12]}, "
                        f"running {runtime.torch_git[:12]}")
    missing = [flag for flag in record.cpu_flags if flag not in runtime.cpu_flags]
    if missing:
        problems.append(f"this CPU lacks {' '.join(missing)} (built on {record.build_cpu})")
    return problems


def example_digest(inputs: ModelInputs) -> str:
    """Identifies example inputs: the stored reference is only valid for the same ones."""
    digest = hashlib.sha256()
    for tensor in inputs:
        digest.update(f"{tuple(tensor.shape)}{tensor.dtype};".encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def input_mismatch(record: PackageRecord, example: ModelInputs) -> str | None:
    """How the handler's inputs differ from what the package was compiled for."""
    made = [(tuple(x.shape[1:]), str(x.dtype).removeprefix("torch.")) for x in example]
    wanted = [(spec.shape, spec.dtype) for spec in record.inputs]
    if made != wanted:
        return (f"the package takes {wanted} per item, the handler makes {made} "
                f"(handler.image_size / max_length changed after the build?)")
    return None


# -- loading ------------------------------------------------------------------------------


def load_package(path: Path) -> Callable[..., object]:
    """The package's model as a function of its input tensors, returning a list of outputs.

    Loaded as `aoti_load_package` loads it, minus two costs. Its device check
    (torch.export.pt2_archive._package._load_aoti) asks inductor for this CPU's vector
    ISA, which compiles and runs probe programs with the C++ compiler: seconds of
    start-up, and without a compiler a misleading "outdated pt2" warning; it only ever
    warns, and our record's check refuses instead. Its wrapper (AOTICompiledModel) costs
    a 2.2 s import of torch.export's serializer; our packages take flat tensors (the
    ServingModule of handlers.aot_build), so the loader's boxed_run is called directly.
    Measured on ResNet-50: 0.23 s to load.
    """
    try:
        # (path, model name, run_single_threaded, num_runners, device_index)
        loader = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)
    except AttributeError:  # the private API moved: the public one
        return torch._inductor.aoti_load_package(str(path))
    return lambda *inputs: loader.boxed_run(list(inputs))


class AotModule:
    """A loaded package called like the eager model: any batch size, fp32 out.

    Batches within the package's bounds run as they are (the batch dimension is dynamic:
    nothing recompiles); a larger one (TorchServe's batchSize raised past
    handler.aot_max_batch at registration) runs in chunks of the largest size.
    AOTInductor does not check strides (a wrongly laid-out input gives wrong answers), so
    inputs are put in the layout the package was compiled for: a no-op for the image
    task's NHWC batch when that is channels-last.
    """

    def __init__(self, compiled: Callable[..., object], max_batch: int, channels_last: bool,
                 on_first_call: Callable[[], None] | None = None) -> None:
        self.compiled = compiled
        self.max_batch = max_batch
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        self._on_first_call = on_first_call

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        inputs = tuple(x.contiguous(memory_format=self.layout) if x.dim() == 4
                       else x.contiguous() for x in inputs)
        batch = inputs[0].shape[0]
        if batch <= self.max_batch:
            output = self._run(inputs)
        else:
            output = torch.cat([self._run(tuple(x[start:start + self.max_batch] for x in inputs))
                                for start in range(0, batch, self.max_batch)])
        if self._on_first_call is not None:
            self._on_first_call()
            self._on_first_call = None
        return output

    def _run(self, inputs: ModelInputs) -> torch.Tensor:
        outputs = self.compiled(*inputs)
        return outputs[0] if isinstance(outputs, (list, tuple)) else outputs  # type: ignore[return-value]


class LoadGuard:
    """A worker that dies while loading or first calling a package (SIGSEGV, SIGILL) must
    not make the next one die the same way: TorchServe would restart it forever.

    Each worker leaves `.<package>.loading-<pid>` in the model folder (shared by the model's
    workers) until its first call returns; a marker whose process is gone says a worker
    died there, and the package is refused from then on.
    """

    def __init__(self, package: Path) -> None:
        self.package = package
        self.marker = package.with_name(f".{package.name}.loading-{os.getpid()}")

    def died_before(self) -> int | None:
        """The pid of a worker that died loading this package, if any."""
        for marker in self.package.parent.glob(f".{self.package.name}.loading-*"):
            pid = int(marker.name.rsplit("-", 1)[1])
            if pid != os.getpid() and not _alive(pid):
                return pid
        return None

    def enter(self) -> None:
        try:
            self.marker.touch()
        except OSError:  # a read-only model folder: no guard, the metadata checks remain
            pass

    def leave(self) -> None:
        self.marker.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_record(model_dir: Path, dtype: str) -> PackageRecord:
    path = model_dir / record_name(dtype)
    if not path.exists():
        raise StepError(f"the archive has no {dtype} package ({path.name}); build it with "
                        f"`python -m torchserve_cpu.model_store.build --aot` or "
                        f"`python -m torchserve_cpu.handlers.aot build`")
    try:
        return PackageRecord.from_json(path.read_text())
    except ValueError as error:
        raise StepError(f"{path.name}: {error}") from None


def check_record(record: PackageRecord, package: Path, example: ModelInputs,
                 runtime: Runtime) -> None:
    """Raise StepError naming every reason the package cannot serve here."""
    if record.refused:
        raise StepError(f"the archive-time accuracy gate refused the {record.dtype} "
                        f"package: {record.refused}")
    problems = incompatibilities(record, runtime)
    mismatch = input_mismatch(record, example)
    if mismatch:
        problems.append(mismatch)
    if not package.exists():
        problems.append(f"{package.name} is missing beside its record")
    elif package.stat().st_size != record.package_bytes:
        problems.append(f"{package.name} has {package.stat().st_size} bytes, the record "
                        f"says {record.package_bytes} (damaged or replaced)")
    if problems:
        raise StepError(f"{package.name}: " + "; ".join(problems))


def load_stage(stage: Stage, ctx: StepContext) -> Stage:
    """The `aot` step: the archive's package for the stage's precision, checked and loaded."""
    if ctx.model_dir is None:
        raise StepError("aot needs the archive's folder (the worker's model_dir)")
    dtype = "bf16" if stage.bf16 else "fp32"
    record = read_record(ctx.model_dir, dtype)
    package = ctx.model_dir / package_name(dtype)
    check_record(record, package, ctx.example, Runtime.here())
    guard = LoadGuard(package)
    crashed = guard.died_before()
    if crashed is not None:
        raise StepError(f"{package.name}: worker {crashed} died loading it; not trying again")
    guard.enter()
    started = time.perf_counter()
    try:
        compiled = load_package(package)
    except Exception as error:
        guard.leave()
        raise StepError(f"{package.name}: loading failed: {type(error).__name__}: {error}"
                        ) from error
    seconds = time.perf_counter() - started
    channels_last = any(spec.channels_last for spec in record.inputs)
    reference = None
    if record.example_digest == example_digest(ctx.example):
        reference = torch.tensor(record.reference, dtype=torch.float32)
    note = (f"{package.name} loaded in {seconds:.2f}s, batch {record.min_batch}.."
            f"{record.max_batch}, built with torch {record.torch}"
            + ("" if reference is not None else "; example changed: checked against eager"))
    module = AotModule(compiled, record.max_batch, channels_last, on_first_call=guard.leave)
    return replace(stage.then("aot", module, note, channels_last=channels_last, autocast=False),
                   reference=reference, ahead_of_time=True)


# -- command line ---------------------------------------------------------------------------


def inspect(path: Path) -> int:
    """Print a record and whether its package can run here; 1 when it cannot."""
    record = PackageRecord.from_json(path.read_text())
    package = path.with_name(package_name(record.dtype))
    summary = {key: value for key, value in asdict(record).items() if key != "reference"}
    print(json.dumps(summary, indent=1))
    problems = [f"refused at build: {record.refused}"] if record.refused else []
    problems += incompatibilities(record, Runtime.here())
    if not package.exists():
        problems.append(f"{package.name} is not beside the record")
    print("runs here" if not problems else "cannot run here: " + "; ".join(problems))
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["build"]:
        from torchserve_cpu.handlers.aot_build import main as build_main  # export + compile

        return build_main(args[1:])
    parser = argparse.ArgumentParser(prog="python -m torchserve_cpu.handlers.aot",
                                     description="AOTInductor packages: build | inspect")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="compile a model into packages (see `build --help`)")
    inspect_parser = sub.add_parser("inspect", help="show a record; exit 1 if it cannot run here")
    inspect_parser.add_argument("record", type=Path, help="an aot-<dtype>.json")
    parsed = parser.parse_args(args)
    try:
        return inspect(parsed.record)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
