"""The tensor task: JSON numbers and Open Inference Protocol (KServe v2) tensors in, numbers
out; each malformed tensor a BadInput naming the problem; served through the real handler
entry point with TorchServe's own request parsing, optimized and gated like an image model."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from tests.support.tiny_archive import TABULAR_MODEL
from tests.support.torchserve_calls import metered_context, torchserve_call
from torchserve_cpu.handlers import optimizing_handler
from torchserve_cpu.handlers.envelopes import instance_body
from torchserve_cpu.handlers.errors import BadInput
from torchserve_cpu.handlers.loading import load_model
from torchserve_cpu.handlers.model_config import parse_settings
from torchserve_cpu.handlers.open_inference import OpenInferenceResponse
from torchserve_cpu.handlers.optimizing_handler import OptimizingHandler
from torchserve_cpu.handlers.served_model import build_served_model
from torchserve_cpu.handlers.tasks import make_task
from torchserve_cpu.handlers.tasks.tensor import TensorSample, TensorTask

ROW = [0.5, -1.0, 2.0, 0.0, 1.5, -0.25, 3.0, 1.0]


def task(**section: object) -> TensorTask:
    return make_task(parse_settings({"task": "tensor", "input_shape": [8], **section}),
                     Path("/nonexistent"))  # type: ignore[return-value]


def v2(data: object, shape: object = (8,), datatype: str = "FP32", **extra: object) -> dict:
    return {"inputs": [{"name": "features", "shape": list(shape) if isinstance(
        shape, tuple) else shape, "datatype": datatype, "data": data}], **extra}


@pytest.mark.parametrize("body", [
    ROW, json.dumps(ROW).encode(), bytearray(json.dumps(ROW).encode()), {"data": ROW},
    [ROW], v2(ROW), v2([ROW], (1, 8)), v2(ROW, (2, 4)) | {}, json.dumps(v2(ROW)).encode(),
])
def test_every_accepted_form_is_one_item(body: object) -> None:
    if isinstance(body, dict) and body.get("inputs", [{}])[0].get("shape") == [2, 4]:
        body = v2([ROW[:4], ROW[4:]], (1, 8))  # nested data of shape [1, 8]
    sample = task().decode(body, "application/json")
    assert torch.equal(sample.tensor, torch.tensor(ROW))
    assert sample.tensor.dtype == torch.float32


def test_protocol_requests_are_answered_in_the_protocols_form() -> None:
    tensor_task = task()
    plain = tensor_task.decode(ROW, None)
    asked = tensor_task.decode(v2(ROW, id="r-1"), None)
    batched = tensor_task.decode(v2(ROW, (1, 8)), None)
    assert (plain.protocol, asked.protocol, asked.request_id, batched.batched) == \
        (False, True, "r-1", True)
    output = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    answers = tensor_task.answer(output, [plain, asked, batched])
    assert answers[0] == [1.0, 2.0, 3.0]
    assert isinstance(answers[1], OpenInferenceResponse)
    assert answers[1] == {"id": "r-1", "outputs": [
        {"name": "output-0", "shape": [3], "datatype": "FP32", "data": [4.0, 5.0, 6.0]}]}
    assert answers[2]["outputs"][0]["shape"] == [1, 3]  # as the request: a batch of one


def test_integer_inputs(tmp_path: Path) -> None:
    ids = task(input_shape=[4], input_dtype="int64")
    sample = ids.decode(v2([1, 2, 3, 4], (4,), "INT64"), None)
    assert sample.tensor.dtype == torch.int64 and sample.tensor.tolist() == [1, 2, 3, 4]
    (example,) = ids.example_inputs(2)
    assert example.shape == (2, 4) and example.dtype == torch.int64
    with pytest.raises(BadInput, match=r"1\.5 is not an integer \(INT64\)"):
        ids.decode([1, 1.5, 2, 3], None)


@pytest.mark.parametrize(("body", "message"), [
    ([1.0, 2.0], r"^data: shape \[2\]: the model takes one item of shape \[8\] per request"),
    ([ROW, ROW], r"^data: shape \[2, 8\]: the model takes one item of shape \[8\]"),
    ([1.0, "a", 2.0], r"^data: 'a' is not a number \(FP32\)"),
    ([1.0, None], r"^data: None is not a number"),
    ([True] * 8, r"^data: True is not a number"),
    ([[1.0, 2.0], [3.0]], r"^data: nested lists of unequal lengths"),
    (b"[1, 2", r"^body is not JSON"),
    ({"text": "hello"}, r"^expected JSON numbers of shape \[8\]"),
    ("1,2,3", r"^expected JSON numbers of shape \[8\]"),
    (v2(ROW, datatype="FP64"), r'^inputs\[0\] "features": datatype FP64: this model takes FP32 '
                               r"\(handler\.input_dtype: float32\)"),
    (v2(ROW, datatype="BYTES"), r"datatype BYTES: this model takes a tensor of numbers"),
    (v2(ROW, datatype="FLOAT"), r"datatype 'FLOAT' is not one of BOOL, UINT8"),
    (v2(ROW, (9,)), r"shape \[9\] holds 9 elements, data has 8"),
    (v2(ROW, "8"), r"shape '8' is not a list of sizes"),
    (v2(ROW[:4], (4,)), r'^inputs\[0\] "features": shape \[4\]: the model takes one item'),
    (v2(ROW) | {"inputs": [v2(ROW)["inputs"][0]] * 2}, r"^inputs: the model takes one input "
                                                        r"tensor, got 2"),
    ({"inputs": [{"name": "x", "shape": [8], "datatype": "FP32"}]}, r"no data"),
])
def test_a_malformed_tensor_is_a_bad_input_naming_the_problem(body: object,
                                                              message: str) -> None:
    with pytest.raises(BadInput, match=message) as caught:
        task().decode(body, "application/json")
    assert caught.value.status == 400


def test_a_content_type_that_is_not_json_is_415() -> None:
    with pytest.raises(BadInput, match="unsupported content type 'image/png'") as caught:
        task().decode(b"\x89PNG", "image/png")
    assert caught.value.status == 415


def test_the_example_comes_from_the_config_never_guessed() -> None:
    with pytest.raises(ValueError, match=r"^handler\.input_shape: task tensor needs the shape"):
        make_task(parse_settings({"task": "tensor"}), Path("/nonexistent"))
    for bad in ([], [8, 0], "8", [8.0]):
        with pytest.raises(ValueError, match=r"handler\.input_shape: expected the shape"):
            parse_settings({"task": "tensor", "input_shape": bad})
    (example,) = task(input_shape=[3, 5]).example_inputs(4)
    assert example.shape == (4, 3, 5) and example.dtype == torch.float32


def test_a_kservev2_envelope_item_is_read_whole_by_the_tensor_task() -> None:
    """TorchServe's kservev2 envelope hands on each input with its data reshaped to nested
    lists; the envelope then wraps the answer itself, so the answer is plain numbers."""
    item = {"name": "features", "shape": [8], "datatype": "FP32", "data": ROW}
    sample = task().decode(instance_body(item, tensor_inputs=True), None)
    assert isinstance(sample, TensorSample) and not sample.protocol
    with pytest.raises(BadInput, match="datatype FP32: send BYTES"):
        instance_body(item)  # the image and text tasks still refuse tensors


# -- served: the real entry point, the optimizer and the gate ----------------------------

@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "tabular.py").write_text(TABULAR_MODEL)
    torch.manual_seed(0)
    manifest = {"model": {"modelFile": "tabular.py"}}
    torch.save(load_model(tmp_path, manifest).state_dict(), tmp_path / "tabular.pt")
    return tmp_path


MANIFEST = {"model": {"modelName": "tabular", "modelVersion": "1.0",
                      "modelFile": "tabular.py", "serializedFile": "tabular.pt"}}
SECTION = {"task": "tensor", "input_shape": [8], "warmup_iterations": 1, "itt_ranges": False}


def eager(model_dir: Path, rows: list[list[float]]) -> torch.Tensor:
    with torch.no_grad():
        return load_model(model_dir, dict(MANIFEST))(torch.tensor(rows))


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "int8"])
def test_the_optimizer_and_gate_build_a_tensor_model(model_dir: Path, dtype: str) -> None:
    if dtype == "int8":
        pytest.importorskip("torchao", reason="int8 without convolutions: the [int8] extra")
    served = build_served_model(model_dir, MANIFEST, {**SECTION, "dtype": dtype})
    # int8: the archive has no package, so this host builds its dynamic int8 package once
    # (handlers.archive.host_cache) and serves that
    step = "aot" if dtype == "int8" else "trace"
    assert step in served.model.plan.steps and served.model.dtype == dtype
    assert served.model.agreement.passed and served.example[0].shape == (1, 8)
    rows = [ROW, [0.0] * 8, [1.0] * 8]
    atol = 1e-4 if dtype == "fp32" else 0.1
    assert torch.allclose(served(torch.tensor(rows)).float(), eager(model_dir, rows), atol=atol)


def test_the_handler_answers_json_and_v2_and_a_bad_tensor_gets_its_own_400(
        model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(optimizing_handler, "pin_current_worker", lambda model_name: None)
    handler = OptimizingHandler()
    handler.initialize(metered_context("tabular", model_dir, MANIFEST,
                                       {"handler": {**SECTION, "optimize": "eager"}}))
    bodies = [json.dumps(ROW).encode(), json.dumps(v2(ROW, id="abc")).encode(),
              json.dumps([1.0, "x"]).encode()]
    rows, context = torchserve_call(bodies, "application/json", context=handler.context)
    answers = handler.handle(rows, context)
    expected = eager(model_dir, [ROW])[0]
    assert torch.allclose(torch.tensor(answers[0]), expected, atol=1e-5)
    response = answers[1]
    assert (response["model_name"], response["model_version"], response["id"]) == \
        ("tabular", "1.0", "abc")
    (output,) = response["outputs"]
    assert (output["name"], output["shape"], output["datatype"]) == ("output-0", [3], "FP32")
    assert torch.allclose(torch.tensor(output["data"]), expected, atol=1e-5)
    assert answers[2] == {"error": "data: 'x' is not a number (FP32)", "status": 400}
    assert context.get_response_status(2) == (400, "data: 'x' is not a number (FP32)")
    assert context.get_response_status(0)[0] == 200


def test_a_model_that_does_not_take_images_says_which_keys_to_set(
        model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The tabular MLP under the default task: not a bare `mat1 and mat2` error."""
    with pytest.raises(ValueError) as caught:
        build_served_model(model_dir, MANIFEST, {"warmup_iterations": 1})
    message = str(caught.value)
    assert message.startswith("the model does not run on the example input: RuntimeError: "
                              "mat1 and mat2 shapes cannot be multiplied")
    assert "made-up 1x3x224x224 image batch" in message
    assert "set handler.task: tensor and handler.input_shape" in message


def test_a_configuration_error_stops_the_worker_with_one_line_once(
        model_dir: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """TorchServe restarts the worker forever: one line, logged once, no traceback."""
    monkeypatch.setattr(optimizing_handler, "pin_current_worker", lambda model_name: None)
    monkeypatch.setattr(optimizing_handler, "LOG_DRAIN_S", 0.0)
    config = {"handler": {"task": "tensor", "input_shap": [8]}}
    with caplog.at_level(logging.INFO):
        for _ in range(3):  # three retries of the same worker
            with pytest.raises(SystemExit) as caught:
                OptimizingHandler().initialize(
                    metered_context("tabular", model_dir, MANIFEST, config))
            assert caught.value.code == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    assert "handler.input_shap: unknown key; did you mean input_shape?" in errors[0].getMessage()
    assert "torchserve-cpu check" in errors[0].getMessage()
