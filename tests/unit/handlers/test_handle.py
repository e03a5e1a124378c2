"""The handler inside TorchServe's own request flow: real Context, real metrics cache, batches
decoded by ts/service.py, a tiny conv net; only the launcher's pinning is left out."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from torch.profiler import ProfilerActivity

from tests.support.torchserve_calls import (
    call,
    form_request,
    handler_times,
    png,
    tiny_model_context,
    torchserve_batch,
)
from torchserve_cpu.handlers import optimizing_handler
from torchserve_cpu.handlers.optimizing_handler import OptimizingHandler
from torchserve_cpu.handlers.served_record import read_records

SECTION = {"task": "image_classification", "optimize": "eager", "image_size": 8,
           "resize_size": 8, "topk": 2, "warmup_iterations": 1, "itt_ranges": False}


@pytest.fixture
def handler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            caplog: pytest.LogCaptureFixture) -> OptimizingHandler:
    """An initialized handler with the worker context TorchServe would give it."""
    monkeypatch.setattr(optimizing_handler, "pin_current_worker", lambda model_name: None)
    handler = OptimizingHandler()
    with caplog.at_level(logging.INFO):
        handler.initialize(tiny_model_context(tmp_path, SECTION))
    return handler


def test_handler_time_metric_recorded(handler: OptimizingHandler,
                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.clear()
    with caplog.at_level(logging.INFO):
        answers, _ = call(handler, [png((200, 30, 30))])
    # the stock answer: {label: probability} for the top 2 of the tiny model's 4 classes
    assert len(answers) == 1 and list(answers[0]) != ["error", "status"] and len(answers[0]) == 2
    lines = handler_times(caplog.records)
    assert len(lines) == 1 and "|#ModelName:tiny,Level:Model|" in lines[0], lines


def test_bad_item_gets_its_own_4xx_and_the_others_are_answered(
        handler: OptimizingHandler) -> None:
    good = [png((200, 30, 30)), png((30, 30, 200))]
    alone, _ = call(handler, good)
    answers, context = call(handler, [good[0], b"not an image", good[1]])
    assert answers[0] == alone[0] and answers[2] == alone[1]
    assert answers[1]["status"] == 400 and "cannot decode image" in answers[1]["error"]
    assert context.get_response_status(1)[0] == 400
    assert context.get_response_status(1)[1] == answers[1]["error"]
    assert context.get_response_status(0)[0] == 200 and context.get_response_status(2)[0] == 200


def test_batch_of_only_bad_items_never_reaches_the_model(handler: OptimizingHandler) -> None:
    answers, context = call(handler, [b"", b"\x00\x01"])
    assert [answer["status"] for answer in answers] == [400, 400]
    assert [context.get_response_status(i)[0] for i in range(2)] == [400, 400]


def test_profiler_runs_the_same_hooks(handler: OptimizingHandler,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """ENABLE_TORCH_PROFILER: BaseHandler's profiled flow, per-item answers kept."""
    traces = []
    handler.profiler_args = {"activities": [ProfilerActivity.CPU],
                             "on_trace_ready": traces.append}
    monkeypatch.setenv("ENABLE_TORCH_PROFILER", "true")
    answers, context = call(handler, [png((10, 200, 10)), b"junk"])
    assert len(traces) == 1
    names = {event.key for event in traces[0].key_averages()}
    assert {"preprocess", "inference", "postprocess"} <= names
    assert len(answers[0]) == 2 and "error" not in answers[0] and answers[1]["status"] == 400
    assert context.get_response_status(1)[0] == 400


def test_ready_line_and_record_say_what_is_served(handler: OptimizingHandler,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    messages = [r.getMessage() for r in caplog.get_records("setup")]
    ready = [m for m in messages if m.startswith("ready model=tiny ")]
    assert len(ready) == 1 and "pipeline=eager[eager] " in ready[0] and " dtype=fp32 " in ready[0]
    [record] = read_records("\n".join(messages))
    assert (record.model, record.pipeline, record.preset, record.dtype) == \
        ("tiny", "eager[eager]", "eager", "fp32")
    assert record.ipex == handler.served.ipex.reason and record.placement is None
    assert record.load_s > 0 and record.affinity and record.rejected == ()


def test_multipart_form_upload_is_answered_as_the_raw_body(handler: OptimizingHandler) -> None:
    """A browser form / `curl -F data=@cat.png`: the request is multipart/form-data, the
    file part is image/png (the 415 this used to get came from the request's type)."""
    # the same two images in one batch: oneDNN's AVX-512/AMX kernels block by batch size,
    # so batch 1 and batch 2 differ in the last float bits (seen on a Sapphire-Rapids-class Xeon)
    raw, _ = call(handler, [png((200, 30, 30)), png((200, 30, 30))])
    rows, context = torchserve_batch([
        form_request(0, [("data", "image/png", bytearray(png((200, 30, 30))))]),
        form_request(1, [("data", "application/octet-stream", bytearray(png((200, 30, 30)))),
                         ("note", "", bytearray(b"from a form"))]),
        form_request(2, [("file", "image/png", bytearray(png((200, 30, 30))))]),
    ], handler.context)
    answers = handler.handle(rows, context)
    assert answers[:2] == [raw[0], raw[0]]
    assert [context.get_response_status(i)[0] for i in range(3)] == [200, 200, 400]
    assert "no form field named data (got file)" in answers[2]["error"]


class FakeSeat:
    """A PinnedWorker stand-in: refresh() applies the seat's thread count, as the real one
    does on the inference thread."""

    def __init__(self, threads: int) -> None:
        from torchserve_cpu.launcher.torchserve.worker import WorkerPlacement

        self.threads = threads
        self.placement = WorkerPlacement("tiny", (0,), 0, threads, "glibc", "not bound")

    def refresh(self) -> None:
        import torch

        torch.set_num_threads(self.threads)

    def on_placement(self, listener) -> None:  # the metrics hook; no placement here
        pass

    def on_departure(self, listener) -> None:  # the metrics hook; no neighbours here
        pass


@pytest.mark.parametrize(("optimize", "rebuilds"), [("default", True), ("eager", False)])
def test_a_thread_count_change_rebuilds_a_model_bound_to_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        optimize: str, rebuilds: bool) -> None:
    """oneDNN Graph keeps the thread count it was compiled for (8x slower on a re-seated
    worker): a re-balance that changes the count rebuilds such a model, once."""
    import torch

    before = torch.get_num_threads()
    seat = FakeSeat(threads=1)
    monkeypatch.setattr(optimizing_handler, "pin_current_worker", lambda model_name: seat)
    handler = OptimizingHandler()
    try:
        handler.initialize(tiny_model_context(tmp_path, {**SECTION, "optimize": optimize}))
        assert handler.built_threads == 1
        assert handler.served.model.stage.binds_thread_count is rebuilds
        seat.threads = 2  # a neighbour left: this worker grew
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            first, _ = call(handler, [png((200, 30, 30))])
            again, _ = call(handler, [png((200, 30, 30))])
        rebuilt = [r.getMessage() for r in caplog.records if "rebuilt its model" in r.getMessage()]
        assert len(rebuilt) == (1 if rebuilds else 0), rebuilt
        assert handler.built_threads == (2 if rebuilds else 1)
        assert first == again and len(first[0]) == 2
    finally:
        torch.set_num_threads(before)
