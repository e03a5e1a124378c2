"""The AOTInductor package format: `aot-<dtype>.pt2` and its record `aot-<dtype>.json`.

A package is made when the archive is built (handlers.archive.aot_build): the model exported
with a dynamic batch dimension and compiled by AOTInductor, weights inside. Its record
(`PackageRecord`) says what it needs to run: the torch build, the CPU flags of the build
host, the input layout, and eager's output on the handler's example input. The worker
(handlers.optimize.aot_load) reads the record, refuses what cannot run here, and loads the
rest: no tracing, no export, no C++ compiler.

    torchserve-cpu aot build --model-file m.py --serialized-file m.pt \\
        --config-file model-config.yaml -o aot/
    torchserve-cpu aot inspect aot/aot-fp32.json      # can it run here?
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from torchserve_cpu.handlers.tasks import ModelInputs
from torchserve_cpu.launcher.host import ARM_INT8_DOT, X86_INT8_DOT, cpuinfo, this_cpu

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

    dtype: str  # fp32 | bf16 | int8 (reduced precision inside the graph; fp32 in and out)
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
    #: int8: activation width quantized for (8: needs an int8 dot product, 7: AVX2 is exact)
    activation_bits: int | None = None
    fp32_modules: tuple[str, ...] = ()  # int8: left in fp32 by the sensitivity search
    #: int8 at 8 bits: the build host's int8 dot-product flags; one of them must be here
    int8_flags: tuple[str, ...] = ()
    #: what `reference` is eager's output on: "example" (the handler's example inputs) or
    #: "calibration" (the first len(reference) of the archive's real inputs: random pixels
    #: say nothing of int8's top-1)
    reference_inputs: str = "example"
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
            for key in ("fp32_modules", "int8_flags"):
                data[key] = tuple(data.get(key) or ())
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
    #: the flags oneDNN may use (ONEDNN_MAX_CPU_ISA hides some); None: all of cpu_flags
    onednn_flags: frozenset[str] | None = None

    @classmethod
    def here(cls) -> Runtime:
        return cls(torch.__version__, torch.version.git_version or "",
                   frozenset(cpuinfo().get("flags", "").split()), this_cpu().flags)


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
    usable = runtime.cpu_flags if runtime.onednn_flags is None else runtime.onednn_flags
    if record.dtype == "int8" and record.activation_bits == 8 and not any(
            flag in usable for flag in (*X86_INT8_DOT, *ARM_INT8_DOT)):
        # AVX2's vpmaddubsw sums u8 x s8 pairs in saturating int16: 8-bit activations
        # overflow (EfficientNet-Lite0 on a Zen 3: worst cosine 0.60, quantize.py)
        has = "oneDNN may use none (ONEDNN_MAX_CPU_ISA)" if any(
            flag in runtime.cpu_flags for flag in (*X86_INT8_DOT, *ARM_INT8_DOT)) \
            else "this CPU has none"
        problems.append(f"8-bit int8 activations need an int8 dot product "
                        f"({' or '.join(record.int8_flags or X86_INT8_DOT)}); {has} "
                        f"(its 16-bit sums saturate)")
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


def first_output(outputs: object) -> torch.Tensor:
    """A package returns its outputs as a list; our models have one."""
    return outputs[0] if isinstance(outputs, (list, tuple)) else outputs  # type: ignore[return-value]


# -- inspecting a record ---------------------------------------------------------------------


def inspect_record(path: Path) -> tuple[dict[str, object], list[str]]:
    """A record's fields (without the reference outputs) and every reason its package
    cannot run here (none: it can)."""
    record = PackageRecord.from_json(path.read_text())
    package = path.with_name(package_name(record.dtype))
    summary = {key: value for key, value in asdict(record).items() if key != "reference"}
    problems = [f"refused at build: {record.refused}"] if record.refused else []
    problems += incompatibilities(record, Runtime.here())
    if not package.exists():
        problems.append(f"{package.name} is not beside the record")
    return summary, problems
