"""A TorchServe handler that pins its worker, optimizes its model and serves batches.

At load: claim this worker's cores (launcher), build the served model
(handlers.served_model), warm it up and say what it serves: a `ready` line for people and
a JSON record for programs (handlers.served_record), and on TorchServe's metrics endpoint
the same, its placement and per-stage latencies (handlers.metrics). Per request it keeps
BaseHandler's `handle` (the HandlerTime metric, torch.profiler under ENABLE_TORCH_PROFILER,
describe) and fills its hooks: preprocess decodes each item on its own, so one bad item
gets its own 4xx while the rest of the batch is answered; inference runs the good items as
one batch; postprocess puts every answer in its place. Items that a service envelope (KServe)
unpacked from one request are answered in that request (handlers.envelopes). Subclasses
override one hook at most.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from ts.torch_handler.base_handler import BaseHandler

from torchserve_cpu.handlers.envelopes import (
    ItemOrigin,
    came_through_envelope,
    check_answerable,
    instance_label,
    item_origins,
    item_payload,
    request_errors,
    request_headers,
)
from torchserve_cpu.handlers.errors import BadInput
from torchserve_cpu.handlers.metrics import (
    INFERENCE,
    POSTPROCESS,
    PREPROCESS,
    WorkerMetrics,
    worker_metrics,
)
from torchserve_cpu.handlers.open_inference import OpenInferenceResponse
from torchserve_cpu.handlers.optimize import Decision
from torchserve_cpu.handlers.profiling import op_ranges, stage_range
from torchserve_cpu.handlers.served_model import ServedModel, build_served_model
from torchserve_cpu.handlers.served_record import ServedRecord, record_line
from torchserve_cpu.handlers.tasks import ModelInputs
from torchserve_cpu.launcher.host import CpuFacts, capabilities, format_cpulist
from torchserve_cpu.launcher.torchserve import PinnedWorker, pin_current_worker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodedBatch:
    """A batch between the hooks: model inputs for the good items, errors for the rest,
    and the model's outputs once inference ran."""

    inputs: ModelInputs | None
    indices: list[int]  # the item each row of `inputs` came from
    errors: dict[int, BadInput] = field(default_factory=dict)
    origins: list[ItemOrigin] | None = None  # None: an envelope merged several requests
    count: int = 0  # items, good and bad
    outputs: torch.Tensor | None = None
    samples: list = field(default_factory=list)  # the good items as decoded (how they asked)


class OptimizingHandler(BaseHandler):
    """BaseHandler with CPU pinning, an optimized model and per-item error answers."""

    served: ServedModel
    pinned: PinnedWorker | None
    metrics: WorkerMetrics

    def initialize(self, context: object) -> None:
        started = time.perf_counter()
        self.context = context
        self.model_name = context.model_name  # type: ignore[attr-defined]
        self.pinned = self._pin_worker()
        self.metrics = worker_metrics(context, self.model_name)
        self._build()
        self._rebuild_if_threads_changed()  # a worker that joined meanwhile re-seated this one
        self.initialized = True
        self._report_ready(ready_record(self.model_name, self.served,
                                        time.perf_counter() - started, self.pinned))
        self.metrics.served(self.served.model, self.served.settings.dtype)
        if self.pinned is not None:
            self.pinned.on_placement(self.metrics.placement)
            self.pinned.on_departure(self.metrics.departed)

    def _build(self) -> None:
        """Build and warm the model with the seat's current thread count applied."""
        if self.pinned is not None:
            self.pinned.refresh()
        yaml_config = getattr(self.context, "model_yaml_config", None) or {}
        model_dir = Path(self.context.system_properties["model_dir"])  # type: ignore[attr-defined]
        try:
            self.served = build_served_model(
                model_dir,
                self.context.manifest,  # type: ignore[attr-defined]
                yaml_config.get("handler"),
                pt2_section=yaml_config.get("pt2"),
            )
        except CONFIGURATION_ERRORS as error:  # the archive's mistake: no retry can succeed
            stop_for_configuration(model_dir, self.model_name, error)
        # A model built ahead of time ran its serving code in its check: no warm-up.
        if not self.served.model.stage.ahead_of_time:
            for _ in range(self.served.settings.warmup_iterations):
                self.served(*self.served.example)
        self.built_threads = torch.get_num_threads()

    def _rebuild_if_threads_changed(self) -> None:
        """Follow a re-balance that changed the thread count of a model bound to it."""
        if self.pinned is not None:
            self.pinned.refresh()
        threads = torch.get_num_threads()
        if threads == self.built_threads or not self.served.model.stage.binds_thread_count:
            return
        started = time.perf_counter()
        built = self.built_threads
        self._build()
        log.warning("launcher: %s rebuilt its model for %d intra-op threads (built for %d; "
                    "oneDNN Graph keeps the count it was compiled for) in %.1fs",
                    self.model_name, threads, built, time.perf_counter() - started)

    def _pin_worker(self) -> PinnedWorker | None:
        """Claim this worker's core block before any weights are touched (NUMA-local)."""
        pinned = pin_current_worker(self.model_name)
        if pinned is not None:
            log.info("worker placement: %s", pinned.placement.describe())
        return pinned

    def _report_ready(self, record: ServedRecord) -> None:
        """The ready line README documents, then the same facts as a record for programs."""
        log.info(
            "ready model=%s pipeline=%s ipex=%s dtype=%s load=%.1fs intra_op_threads=%d "
            "affinity=%s placement=%s notes=%s rejected=%s%s",
            record.model, record.pipeline, record.ipex, record.dtype, record.load_s,
            record.intra_op_threads, format_cpulist(record.affinity),
            self.pinned.placement.describe() if self.pinned else "none",
            list(record.notes), list(record.rejected),
            f" timed_ms={record.timings_ms}" if record.timings_ms else "",
        )
        log.info("%s", record_line(record))

    def handle(self, data: list | None, context: object) -> list[object]:
        """BaseHandler's handle, after following a re-balance (one stat() when nothing
        changed): thread count and memory policy only this thread can apply."""
        self._rebuild_if_threads_changed()
        return super().handle(data, context)

    def preprocess(self, data: list | None) -> DecodedBatch:
        """Decode every item on its own, reading the headers of the request it came from."""
        with stage_range(f"{self.model_name}.preprocess", self.served.settings.itt_ranges), \
                self.metrics.stage(PREPROCESS):
            return self._decode(data)

    def _decode(self, data: list | None) -> DecodedBatch:
        headers = request_headers(self.context)
        enveloped = came_through_envelope(data, headers)
        if enveloped:
            check_answerable(self.context, data, len(headers))
        items: list = data or []
        origins = item_origins(len(items), len(headers))
        task = self.served.task
        samples, indices, errors = [], [], {}
        for index, item in enumerate(items):
            origin = origins[index] if origins else None
            try:
                body, content_type = item_payload(item, index, origin, headers, enveloped,
                                                  task.tensor_inputs)
                samples.append(task.decode(body, content_type))
                indices.append(index)
            except BadInput as error:
                if enveloped:  # name it as the client did: instances[2], inputs[2] "input-2"
                    label = instance_label(origin.position if origin else index, item)
                    error = BadInput(f"{label}: {error.message}", error.status)
                errors[index] = error
        inputs = task.collate(samples) if samples else None
        return DecodedBatch(inputs, indices, errors, origins, len(items), samples=samples)

    def inference(self, batch: DecodedBatch) -> DecodedBatch:  # type: ignore[override]
        """The good items through the model, as one batch."""
        if batch.inputs is None:
            return batch
        settings = self.served.settings
        with stage_range(f"{self.model_name}.inference", settings.itt_ranges), \
                op_ranges(settings.emit_itt), self.metrics.stage(INFERENCE):
            return replace(batch, outputs=self.served(*batch.inputs))

    def postprocess(self, batch: DecodedBatch) -> list[object]:  # type: ignore[override]
        """Every item answered in its place; each request with a bad item gets a 4xx.

        With a KServe envelope all items are one request's instances. A bad instance makes
        that request a 4xx whose message names the bad instances (`instances[1]: ...`, v2
        `inputs[1] "input-1": ...`); the good instances are still answered in their places
        and the bad ones get `{"error", "status"}`, as the requests of a batch are. One HTTP
        request has one status, and a 200 must not hide a failure; the body keeps the
        envelope's usual shape (`predictions` / `outputs`) so the good answers stay usable.
        """
        answers: list[object] = [None] * batch.count
        if batch.outputs is not None:
            with stage_range(f"{self.model_name}.postprocess", self.served.settings.itt_ranges), \
                    self.metrics.stage(POSTPROCESS):
                for index, answer in zip(batch.indices,
                                         self.served.task.answer(batch.outputs, batch.samples)):
                    answers[index] = self._completed(answer)
        for index, error in batch.errors.items():
            answers[index] = {"error": error.message, "status": error.status}
        for request, error in request_errors(batch.errors, batch.origins).items():
            self.context.set_response_status(error.status, error.message, request)  # type: ignore[union-attr]
        return answers

    def _completed(self, answer: object) -> object:
        """An Open Inference Protocol response gets the model's name and version."""
        if isinstance(answer, OpenInferenceResponse):
            model = self.context.manifest.get("model", {})  # type: ignore[attr-defined]
            version = {"model_version": model["modelVersion"]} if model.get("modelVersion") \
                else {}
            answer = OpenInferenceResponse(model_name=self.model_name, **version, **answer)
        return answer

    def explain_handle(self, data_preprocess: DecodedBatch, raw_data: list) -> list[object]:
        """TorchServe's explanations (Captum) need gradients through the eager model, which
        the optimized graph does not keep: an explanation request gets the prediction."""
        return self.postprocess(self.inference(data_preprocess))


#: what a wrong archive or model-config.yaml raises at load (settings, task, model file,
#: weights, a model that does not run on the task's example): no retry can succeed
CONFIGURATION_ERRORS = (ValueError, pickle.UnpicklingError, FileNotFoundError)
CONFIGURATION_MARKER = ".tscpu-configuration-error"
LOG_DRAIN_S = 2.0  # how long a worker that logged its mistake waits before it exits


def stop_for_configuration(model_dir: Path, model_name: str, error: Exception) -> None:
    """End this worker on a configuration mistake: one log line naming it, not a traceback.

    TorchServe restarts a failed worker forever, each in a new process, and logs every
    failure's traceback; the mistake is logged once per model directory (a marker holds
    the message; a different mistake is logged again), and the worker exits with status 1
    as TorchServe's own failure path does (ts/model_service_worker.py), without a trace.
    """
    message = str(error).replace("\n", "; ")
    marker = model_dir / CONFIGURATION_MARKER
    try:
        seen = marker.read_text() == message
    except OSError:
        seen = False
    if not seen:
        log.error("model %s cannot start, fix its archive: %s (`torchserve-cpu check "
                  "ARCHIVE.mar` lists every problem; TorchServe retries this worker, "
                  "this is logged once)", model_name, message)
        try:
            marker.write_text(message)
        except OSError:
            pass  # a read-only model dir: logged on every retry, still without a trace
        # The frontend stops reading a worker's output once the worker's socket closes
        # (WorkerLifeCycle terminates its reader threads): a line it has not read yet is
        # lost (seen on a loaded 2-core machine: one of four bad archives never showed its
        # line, with the buffers flushed). Flush, then give the reader time.
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(LOG_DRAIN_S)
    raise SystemExit(1)


def ready_record(model_name: str, served: ServedModel, load_s: float,
                 pinned: PinnedWorker | None) -> ServedRecord:
    """What this worker serves, as it reports ready."""
    chosen = served.model
    return ServedRecord(
        model=model_name,
        pid=os.getpid(),
        pipeline=chosen.plan.describe(),
        preset=chosen.plan.name,
        steps=chosen.plan.steps,
        dtype=chosen.dtype,
        ipex=served.ipex.reason,
        load_s=round(load_s, 3),
        intra_op_threads=torch.get_num_threads(),
        affinity=tuple(sorted(os.sched_getaffinity(0))),
        placement=asdict(pinned.placement) if pinned else None,
        notes=chosen.stage.notes,
        rejected=chosen.rejected,
        requested_dtype=served.settings.dtype,
        precision=precision_note(served.precision, chosen.dtype),
        cpu=cpu_summary(served.cpu),
        timings_ms={name: round(ms, 2) for name, ms in chosen.timings_ms},
    )


def precision_note(decision: Decision, served: str) -> str:
    """Why the dtype served is what it is: the CPU's answer, then the gate's if it differs."""
    reasons = [f"{c.dtype}: {c.reason}" for c in decision.candidates]
    if served not in [c.dtype for c in decision.candidates]:
        reasons.append(f"{served}: the reduced precision did not pass the accuracy gate")
    return "; ".join(reasons)


def cpu_summary(cpu: CpuFacts) -> dict[str, object]:
    """The CPU facts the precision decision read (the ready record shows them)."""
    found = capabilities(cpu)
    summary: dict[str, object] = {
        "model": cpu.model, "arch": cpu.arch, "bf16": list(found.bf16_flags),
        "int8_dot": list(found.int8_dot_flags), "int8_7bit": found.int8_saturating}
    if cpu.isa_cap:
        summary["onednn_max_cpu_isa"] = cpu.isa_cap
        summary["hidden"] = sorted(cpu.hidden)
    return summary
