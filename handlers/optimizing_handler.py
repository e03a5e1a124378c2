"""A TorchServe handler that pins its worker, optimizes its model and serves batches.

At load: claim this worker's cores (launcher), load the model, build the optimized
model (handlers.optimizer), warm it up and log one line saying what was done. Per
request: decode each item on its own, so one bad item gets its own 4xx while the rest
of the batch is answered; run the batch; answer. Items that a service envelope (KServe)
unpacked from one request are answered in that request (handlers.envelopes). Subclasses
override one hook at most.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from ts.torch_handler.base_handler import BaseHandler

from torchserve_cpu.handlers.envelopes import (
    ItemOrigin,
    came_through_envelope,
    check_answerable,
    instance_body,
    instance_label,
    item_origins,
    request_errors,
    request_headers,
)
from torchserve_cpu.handlers.errors import BadInput
from torchserve_cpu.handlers.ipex_support import probe_ipex
from torchserve_cpu.handlers.loading import load_model
from torchserve_cpu.handlers.optimizer import Optimized, optimize
from torchserve_cpu.handlers.pipeline import Inputs
from torchserve_cpu.handlers.profiling import op_ranges, stage_range
from torchserve_cpu.handlers.settings import HandlerSettings, parse_settings
from torchserve_cpu.handlers.tasks import Task, make_task
from torchserve_cpu.launcher.cpulist import format_cpulist
from torchserve_cpu.launcher.worker import PinnedWorker, pin_current_worker

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A batch after pre-processing: model inputs for the good items, errors for the rest."""

    inputs: Inputs | None
    indices: list[int]
    errors: dict[int, BadInput] = field(default_factory=dict)
    origins: list[ItemOrigin] | None = None  # None: an envelope merged several requests
    count: int = 0  # items, good and bad


def header(context: object, request: int, name: str) -> str | None:
    """A header of request `request`, whatever its case (TorchServe keeps what the client sent)."""
    try:
        properties = request_headers(context)[request]
    except IndexError:
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

    def preprocess(self, data: list | None) -> Prepared:
        """Decode every item on its own, reading the headers of the request it came from."""
        headers = request_headers(self.context)
        enveloped = came_through_envelope(data, headers)
        if enveloped:
            check_answerable(self.context, data, len(headers))
        items: list = data or []
        origins = item_origins(len(items), len(headers))
        samples, indices, errors = [], [], {}
        for index, item in enumerate(items):
            origin = origins[index] if origins else None
            content_type = header(self.context, origin.request, "content-type") if origin else None
            try:
                body = instance_body(item) if enveloped else request_body(item)
                samples.append(self.task.decode(body, content_type))
                indices.append(index)
            except BadInput as error:
                if enveloped:  # name it as the client did: instances[2], inputs[2] "input-2"
                    label = instance_label(origin.position if origin else index, item)
                    error = BadInput(f"{label}: {error.message}", error.status)
                errors[index] = error
        inputs = self.task.collate(samples) if samples else None
        return Prepared(inputs, indices, errors, origins, len(items))

    def inference(self, inputs: Inputs) -> torch.Tensor:  # type: ignore[override]
        with op_ranges(self.settings.emit_itt):
            return self.model(*inputs)

    def postprocess(self, outputs: torch.Tensor) -> list[object]:
        return self.task.answer(outputs)

    def handle(self, data: list | None, context: object) -> list[object]:
        """Answer every item in its place; each request with a bad item gets a 4xx.

        With a KServe envelope all items are one request's instances. A bad instance makes
        that request a 4xx whose message names the bad instances (`instances[1]: ...`, v2
        `inputs[1] "input-1": ...`); the good instances are still answered in their places
        and the bad ones get `{"error", "status"}`, as the requests of a batch are. One HTTP
        request has one status, and a 200 must not hide a failure; the body keeps the
        envelope's usual shape (`predictions` / `outputs`) so the good answers stay usable.
        """
        self.context = context
        if self.pinned is not None:  # follow a re-balance: one stat() when nothing changed
            self.pinned.refresh()
        itt = self.settings.itt_ranges
        with stage_range(f"{self.model_name}.preprocess", itt):
            prepared = self.preprocess(data)
        answers: list[object] = [None] * prepared.count
        if prepared.inputs is not None:
            with stage_range(f"{self.model_name}.inference", itt):
                outputs = self.inference(prepared.inputs)
            with stage_range(f"{self.model_name}.postprocess", itt):
                for index, answer in zip(prepared.indices, self.postprocess(outputs)):
                    answers[index] = answer
        for index, error in prepared.errors.items():
            answers[index] = {"error": error.message, "status": error.status}
        for request, error in request_errors(prepared.errors, prepared.origins).items():
            context.set_response_status(error.status, error.message, request)  # type: ignore[attr-defined]
        return answers


def request_body(row: dict) -> object:
    """A request's payload as TorchServe passes it: "data" (form field) or "body"."""
    body = row.get("data") if row.get("data") is not None else row.get("body")
    if body is None:
        raise BadInput("empty request body")
    return body
