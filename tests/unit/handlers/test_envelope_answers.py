"""Both answer shapes, and the tensor task, behind TorchServe's real KServe envelopes:
the handler's entry point wrapped by `KServeEnvelope` / `KServev2Envelope` as a worker
wraps it under `service_envelope=kserve|kservev2`."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import torch
from ts.torch_handler.request_envelope.kserve import KServeEnvelope
from ts.torch_handler.request_envelope.kservev2 import KServev2Envelope

from tests.support.tiny_archive import TABULAR_MODEL
from tests.support.torchserve_calls import (
    metered_context,
    png,
    tiny_model_context,
    torchserve_call,
)
from torchserve_cpu.handlers import optimizing_handler
from torchserve_cpu.handlers.loading import load_model
from torchserve_cpu.handlers.optimizing_handler import OptimizingHandler

IMAGE_B64 = base64.b64encode(png((200, 30, 30))).decode()
SECTION = {"optimize": "eager", "image_size": 8, "resize_size": 8, "topk": 2,
           "warmup_iterations": 0, "itt_ranges": False}


@pytest.fixture(autouse=True)
def unpinned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(optimizing_handler, "pin_current_worker", lambda model_name: None)


def answers_behind(envelope: type, handler: OptimizingHandler, body: dict) -> list:
    rows, context = torchserve_call([body], context=handler.context)
    (response,) = envelope(handler.handle).handle(rows, context)
    if envelope is KServeEnvelope:
        return response["predictions"]
    return [output["data"] for output in response["outputs"]]


@pytest.mark.parametrize("response", ["stock", "detailed"])
def test_image_answers_behind_kserve_v1_and_v2(tmp_path: Path, response: str) -> None:
    handler = OptimizingHandler()
    handler.initialize(tiny_model_context(tmp_path, {**SECTION, "response": response}))
    # one instance each: oneDNN's kernels differ in the last bits between batch 1 and 2
    v1 = answers_behind(KServeEnvelope, handler, {"instances": [{"data": IMAGE_B64}]})
    v2 = answers_behind(KServev2Envelope, handler, {"inputs": [
        {"name": "input-0", "shape": [1], "datatype": "BYTES", "data": [IMAGE_B64]}]})
    assert len(v1) == 1 and v2 == [[v1[0]]]  # v2 flattens the answer into a list
    if response == "stock":
        assert set(v1[0]) <= {"0", "1", "2", "3"} and len(v1[0]) == 2
    else:
        assert [entry["index"] for entry in v1[0]["topk"]] and len(v1[0]["topk"]) == 2


def test_the_tensor_task_behind_kservev2(tmp_path: Path) -> None:
    (tmp_path / "tabular.py").write_text(TABULAR_MODEL)
    manifest = {"model": {"modelName": "tabular", "modelFile": "tabular.py",
                          "serializedFile": "tabular.pt"}}
    torch.save(load_model(tmp_path, {"model": {"modelFile": "tabular.py"}}).state_dict(),
               tmp_path / "tabular.pt")
    handler = OptimizingHandler()
    handler.initialize(metered_context("tabular", tmp_path, manifest, {"handler": {
        "task": "tensor", "input_shape": [8], "optimize": "eager", "warmup_iterations": 0}}))
    row = [0.5, -1.0, 2.0, 0.0, 1.5, -0.25, 3.0, 1.0]
    (data,) = answers_behind(KServev2Envelope, handler, {"inputs": [
        {"name": "features", "shape": [1, 8], "datatype": "FP32", "data": row}]})
    with torch.no_grad():
        expected = load_model(tmp_path, manifest)(torch.tensor([row]))[0]
    assert torch.allclose(torch.tensor(data), expected, atol=1e-5)  # flattened by the envelope
