"""Real inputs an archive carries (`handler.calibration`): int8 calibration and the gate's check.

An archive may ship a handful of real inputs as extra files and name them in model-config.yaml:

    handler:
      dtype: int8
      calibration: calibration      # a folder: one request body per file (JPEG/PNG, .txt)
      # or calibration.pt           # a tensor (or list of tensors): model inputs, batch-first

A folder's files are decoded by the model's task exactly as requests are (sorted by name), so
the inputs are what the model will see. They calibrate static int8 and are what every
candidate (bf16, int8, fp32 backends) is checked on against fp32 eager, in slices of the
example batch size, the shape the model was traced for. Without them the check uses the
random example input, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from torchserve_cpu.handlers.errors import BadInput
from torchserve_cpu.handlers.settings import HandlerSettings
from torchserve_cpu.handlers.tasks import ModelInputs, Task

log = logging.getLogger(__name__)

MAX_INPUTS = 256  # enough to calibrate; more only slows every worker's start


def read_archive_inputs(model_dir: Path, name: str, task: Task,
                        limit: int | None = None) -> ModelInputs:
    """The inputs `handler.calibration` names, as one batch (the first `limit`); ValueError
    naming the key."""
    path = (model_dir / name).resolve()
    if not path.is_relative_to(model_dir.resolve()):
        raise ValueError(f"handler.calibration: {name!r} is outside the archive")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        if not files:
            raise ValueError(f"handler.calibration: folder {name!r} has no files")
        if len(files) > MAX_INPUTS:
            raise ValueError(f"handler.calibration: {len(files)} files in {name!r}, "
                             f"at most {MAX_INPUTS}")
        samples = []
        for file in files[:limit]:
            try:
                samples.append(task.decode(file.read_bytes(), None))
            except BadInput as error:
                raise ValueError(f"handler.calibration: {file.name}: {error.message}") from None
        return task.collate(samples)
    if path.suffix == ".pt" and path.is_file():
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        inputs = (loaded,) if isinstance(loaded, torch.Tensor) else tuple(loaded)
        if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs) or \
                len({x.shape[0] for x in inputs}) != 1:
            raise ValueError(f"handler.calibration: {name!r} must hold a tensor or a list of "
                             "tensors with the same batch size")
        return inputs if limit is None else tuple(x[:limit] for x in inputs)
    raise ValueError(f"handler.calibration: {name!r} is neither a folder in the archive nor "
                     "a .pt file (add it with torch-model-archiver --extra-files)")


class CheckInputs:
    """Real inputs to check candidates on, and eager fp32's outputs for them (made once).

    Given a `reader` (a row limit -> inputs) instead of the inputs, nothing is decoded
    until a candidate needs them: an aot int8 package needs 8 of the 76 photos, and
    decoding all of them was 0.16-0.19 s of a 0.45 s worker start (EfficientNet-Lite0)."""

    def __init__(self, inputs: ModelInputs | None, batch: int,
                 reader: Callable[[int | None], ModelInputs] | None = None) -> None:
        if inputs is None and reader is None:
            raise ValueError("CheckInputs needs the inputs or a reader")
        self._inputs = inputs
        self._reader = reader
        self.batch = batch  # rows per call: the example's batch size
        self._reference: torch.Tensor | None = None

    @property
    def inputs(self) -> ModelInputs:
        if self._inputs is None:
            assert self._reader is not None
            self._inputs = self._reader(None)
        return self._inputs

    def head(self, rows: int) -> ModelInputs:
        """The first `rows` inputs, without reading the rest."""
        if self._inputs is None and self._reader is not None:
            return self._reader(rows)
        return tuple(x[:rows] for x in self.inputs)

    @property
    def count(self) -> int:
        return self.inputs[0].shape[0]

    def outputs(self, run: Callable[[ModelInputs], torch.Tensor]) -> torch.Tensor:
        """`run` on every slice of `batch` rows, outputs concatenated as fp32."""
        return torch.cat([run(tuple(x[start:start + self.batch] for x in self.inputs)).float()
                          for start in range(0, self.count, self.batch)])

    def reference(self, eager: torch.nn.Module) -> torch.Tensor:
        """Eager fp32's outputs, computed on first use."""
        if self._reference is None:
            with torch.no_grad():
                self._reference = self.outputs(lambda part: eager(*part))
        return self._reference


def check_inputs(settings: HandlerSettings, task: Task, model_dir: Path,
                 example: ModelInputs) -> CheckInputs | None:
    """The archive's real inputs (None when `handler.calibration` names none), checked in
    slices of the example's batch size."""
    name = settings.calibration
    if name is None:
        return None

    def read(limit: int | None) -> ModelInputs:
        inputs = read_archive_inputs(model_dir, name, task, limit)
        if limit is None:
            log.info("calibration and accuracy check on %d inputs from %s",
                     inputs[0].shape[0], name)
        return inputs

    read(1)  # a bad `handler.calibration` is an error at start, as before
    return CheckInputs(None, example[0].shape[0], reader=read)
