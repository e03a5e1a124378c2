"""The `aot` step, worker side: check an archive's AOTInductor package against this host,
load it, and call it like the eager model (the format: handlers.aot_package)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from torchserve_cpu.handlers.aot_package import (
    PackageRecord,
    Runtime,
    example_digest,
    first_output,
    incompatibilities,
    input_mismatch,
    load_package,
    package_name,
    record_name,
)
from torchserve_cpu.handlers.optimize.steps import Stage, StepContext, StepError
from torchserve_cpu.handlers.tasks import ModelInputs


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
        return first_output(self.compiled(*inputs))


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
                        f"`torchserve-cpu build-archives --aot` or "
                        f"`torchserve-cpu aot build`")
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
    """The `aot` step: the archive's package for the stage's precision, checked and loaded.

    The optimizer tries the int8 plan, then bf16, then fp32 (as this CPU's precision
    decision allows), so the first package that runs here serves and the ready record's
    `rejected` says why each one before it did not."""
    if ctx.model_dir is None:
        raise StepError("aot needs the archive's folder (the worker's model_dir)")
    dtype = "int8" if stage.int8 else "bf16" if stage.bf16 else "fp32"
    folder = ctx.int8_packages if stage.int8 and ctx.int8_packages else ctx.model_dir
    record = read_record(folder, dtype)
    package = folder / package_name(dtype)
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
    checked_on = ctx.example
    if record.reference_inputs == "calibration":
        checked_on = ctx.calibration_head(len(record.reference))
    reference = None
    if checked_on is not None and record.example_digest == example_digest(checked_on):
        reference = torch.tensor(record.reference, dtype=torch.float32)
    int8 = ""
    if record.activation_bits:
        int8 = (f", int8 {record.activation_bits}-bit activations"
                + (f", fp32: {', '.join(record.fp32_modules)}" if record.fp32_modules else ""))
    elif record.dtype == "int8":
        int8 = ", int8 dynamic (activations quantized per token as it runs)"
    note = (f"{package.name} loaded in {seconds:.2f}s, batch {record.min_batch}.."
            f"{record.max_batch}, built with torch {record.torch}{int8}"
            + ("" if reference is not None else
               f"; {record.reference_inputs} inputs changed: checked against eager"))
    module = AotModule(compiled, record.max_batch, channels_last, on_first_call=guard.leave)
    return replace(stage.then("aot", module, note, channels_last=channels_last, autocast=False),
                   reference=reference, ahead_of_time=True,
                   check_inputs=checked_on if reference is not None and checked_on is not
                   ctx.example else None, quick_check=record.reference_inputs == "calibration")
