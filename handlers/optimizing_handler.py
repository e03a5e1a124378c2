"""A TorchServe handler that pins its worker, optimizes its model and serves batches.

At load: claim this worker's cores (launcher), load the model, build the optimized
model (handlers.optimizer), warm it up and log one line saying what was done. Per
request: decode each item on its own, so one bad item gets its own 4xx while the rest
of the batch is answered; run the batch; answer. Subclasses override one hook at most.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from ts.torch_handler.base_handler import BaseHandler

from handlers.errors import BadInput
from handlers.ipex_support import probe_ipex
from handlers.loading import load_model
from handlers.optimizer import Optimized, optimize
from handlers.pipeline import Inputs
from handlers.profiling import op_ranges, stage_range
from handlers.settings import HandlerSettings, parse_settings
from handlers.tasks import Task, make_task
from launcher.cpulist import format_cpulist
from launcher.worker import PinnedWorker, pin_current_worker

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A batch after pre-processing: model inputs for the good items, errors for the rest."""

    inputs: Inputs | None
    indices: list[int]
    errors: dict[int, BadInput] = field(default_factory=dict)


def header(context: object, index: int, name: str) -> str | None:
    """A request header, whatever its case (TorchServe keeps what the client sent)."""
    try:
        properties = context._request_processor[index].get_request_properties()  # type: ignore[attr-defined]
    except (AttributeError, IndexError, TypeError):
        return None
    for key, value in properties.items():
        if key.lower() == name:
            return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)
    return None


class OptimizingHandler(BaseHandler):
    """BaseHandler with CPU pinning, an optimized model and per-item error answers."""

    settings: HandlerSettings
    task: Task
    model: Optimized

    def initialize(self, context: object) -> None:
        started = time.perf_counter()
        self.context = context
        properties = context.system_properties  # type: ignore[attr-defined]
        self.model_name = context.model_name  # type: ignore[attr-defined]
        self.pinned = self._pin_worker()
        model_dir = Path(properties["model_dir"])
        yaml_config = getattr(context, "model_yaml_config", None) or {}
        self.settings = parse_settings(yaml_config.get("handler"))
        self.task = make_task(self.settings, model_dir)
        model = load_model(model_dir, context.manifest)  # type: ignore[attr-defined]
        example = self.task.example_inputs(self.settings.example_batch_size)
        ipex = probe_ipex()
        self.model = optimize(model, example, self.settings, ipex, self.task.classifies)
        for _ in range(self.settings.warmup_iterations):
            self.model(*example)
        self.initialized = True
        log.info(
            "ready model=%s pipeline=%s ipex=%s dtype=%s load=%.1fs intra_op_threads=%d "
            "affinity=%s placement=%s notes=%s rejected=%s",
            self.model_name, self.model.plan.describe(), ipex.reason, self.model.dtype,
            time.perf_counter() - started, torch.get_num_threads(),
            format_cpulist(os.sched_getaffinity(0)),
            self.pinned.placement.describe() if self.pinned else "none",
            list(self.model.stage.notes), list(self.model.rejected),
        )

    def _pin_worker(self) -> PinnedWorker | None:
        """Claim this worker's core block before any weights are touched (NUMA-local)."""
        pinned = pin_current_worker(self.model_name)
        if pinned is not None:
            log.info("worker placement: %s", pinned.placement.describe())
        return pinned

    def preprocess(self, data: list[dict]) -> Prepared:
        samples, indices, errors = [], [], {}
        for index, row in enumerate(data):
            body = row.get("data") if row.get("data") is not None else row.get("body")
            try:
                if body is None:
                    raise BadInput("empty request body")
                samples.append(self.task.decode(body, header(self.context, index, "content-type")))
                indices.append(index)
            except BadInput as error:
                errors[index] = error
        inputs = self.task.collate(samples) if samples else None
        return Prepared(inputs, indices, errors)

    def inference(self, inputs: Inputs) -> torch.Tensor:  # type: ignore[override]
        with op_ranges(self.settings.emit_itt):
            return self.model(*inputs)

    def postprocess(self, outputs: torch.Tensor) -> list[object]:
        return self.task.answer(outputs)

    def handle(self, data: list[dict], context: object) -> list[object]:
        self.context = context
        if self.pinned is not None:  # follow a re-balance: one stat() when nothing changed
            self.pinned.refresh()
        itt = self.settings.itt_ranges
        answers: list[object] = [None] * len(data)
        with stage_range(f"{self.model_name}.preprocess", itt):
            prepared = self.preprocess(data)
        if prepared.inputs is not None:
            with stage_range(f"{self.model_name}.inference", itt):
                outputs = self.inference(prepared.inputs)
            with stage_range(f"{self.model_name}.postprocess", itt):
                for index, answer in zip(prepared.indices, self.postprocess(outputs)):
                    answers[index] = answer
        for index, error in prepared.errors.items():
            context.set_response_status(error.status, error.message, index)  # type: ignore[attr-defined]
            answers[index] = {"error": error.message, "status": error.status}
        return answers
