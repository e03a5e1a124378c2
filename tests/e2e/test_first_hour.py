"""A TorchServe user's first hour (issue 18), end to end on real TorchServe at 127.0.0.1.

- The same EfficientNet-Lite0 archive answered by our handler and by TorchServe's own
  `image_classifier` (tests/support/stock_image_classifier.py): the same `{label:
  probability}` keys, probabilities of the same order of magnitude.
- A tabular MLP of this test's own (8 floats in, 3 out; not in the model store) under
  `task: tensor`: an Open Inference Protocol (KServe v2) request to TorchServe's
  `/v2/models/<m>/infer` (`ts_open_inference_protocol=true`) and to `/predictions/<m>`, and
  a JSON list, each answered with the eager model's numbers; malformed tensors get a 4xx
  naming the problem from the worker that keeps serving (same pid).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import loopback_torchserve as server
from benchmarks.loopback_torchserve import post
from tests.support.tiny_archive import TABULAR_CONFIG, TABULAR_MODEL, archive_model
from torchserve_cpu.handlers.loading import load_model
from torchserve_cpu.launcher.resources import HANDLER_FILE
from torchserve_cpu.model_store.build import build_archive

skimage = pytest.importorskip("skimage", reason="scikit-image ships the photos ([test] extra)")

REPO = Path(__file__).resolve().parents[2]
CHELSEA = (Path(skimage.__file__).parent / "data" / "chelsea.png").read_bytes()
ROW = [0.5, -1.0, 2.0, 0.0, 1.5, -0.25, 3.0, 1.0]
MODELS = ["efficientnet_lite0", "efficientnet_stock", "tabular"]

# The stock handler file is archived and runs in TorchServe's worker only: importing it
# here would put its torchvision/captum stand-ins in this process's sys.modules (it broke
# every transformers-based test collected after it)
STOCK_HANDLER = Path(__file__).resolve().parents[1] / "support" / "stock_image_classifier.py"


@pytest.fixture(scope="module")
def tabular_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tabular-src")


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory, tabular_src: Path):
    store = tmp_path_factory.mktemp("store")
    build_archive("efficientnet_lite0", store, workers=1)
    build_archive("efficientnet_lite0", store, workers=1, archive_name="efficientnet_stock",
                  handler_file=STOCK_HANDLER)
    archive_model(Path(sys.executable).parent, str(HANDLER_FILE), tabular_src, store,
                  "tabular", TABULAR_MODEL, TABULAR_CONFIG)
    run_dir = tmp_path_factory.mktemp("ts")
    config = run_dir / "oip.properties"
    config.write_text((REPO / "config" / "config.properties").read_text()
                      + "ts_open_inference_protocol=true\n")
    ts = server.start(config, store, [f"{name}.mar" for name in MODELS], run_dir=run_dir)
    try:
        ts.wait_ready(MODELS, timeout=900)
        yield ts
    finally:
        ts.stop()


@pytest.fixture(scope="module")
def eager_tabular(tabular_src: Path) -> torch.nn.Module:
    """The archived MLP with the archived weights, in this process."""
    manifest = {"model": {"modelFile": "model.py", "serializedFile": "tabular.pt"}}
    return load_model(tabular_src, manifest)


def test_our_answer_has_the_stock_image_classifiers_shape(serving: server.TorchServe) -> None:
    ours = post(f"{serving.inference_url}/predictions/efficientnet_lite0", CHELSEA, "image/png")
    stock = post(f"{serving.inference_url}/predictions/efficientnet_stock", CHELSEA, "image/png")
    assert ours.status == 200 and stock.status == 200, (ours.body, stock.body)
    ours_answer, stock_answer = ours.json(), stock.json()
    print("ours: ", ours_answer, "\nstock:", stock_answer)
    assert len(ours_answer) == len(stock_answer) == 5  # TorchServe's topk = 5
    assert set(ours_answer) == set(stock_answer)
    assert {"tabby", "tiger cat", "Egyptian cat"} <= set(ours_answer)
    for name, probability in ours_answer.items():
        assert abs(math.log10(probability / stock_answer[name])) < 1, (name, probability)
    assert list(ours_answer.values()) == sorted(ours_answer.values(), reverse=True)


def v2_request(row: list, **extra: object) -> bytes:
    return json.dumps({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32",
                                   "data": row}], **extra}).encode()


@pytest.mark.parametrize("path", ["/v2/models/tabular/infer", "/predictions/tabular"])
def test_a_v2_tensor_request_gets_the_eager_models_numbers(
        serving: server.TorchServe, eager_tabular: torch.nn.Module, path: str) -> None:
    reply = post(serving.inference_url + path, v2_request(ROW, id="first-hour"),
                 "application/json")
    assert reply.status == 200, reply.body
    response = reply.json()
    print(path, json.dumps(response))
    assert (response["model_name"], response["id"]) == ("tabular", "first-hour")
    (output,) = response["outputs"]
    assert (output["name"], output["shape"], output["datatype"]) == ("output-0", [1, 3], "FP32")
    with torch.no_grad():
        expected = eager_tabular(torch.tensor([ROW]))[0]
    assert torch.allclose(torch.tensor(output["data"]), expected, atol=1e-5)


def test_a_json_list_gets_the_eager_models_numbers(
        serving: server.TorchServe, eager_tabular: torch.nn.Module) -> None:
    rows = [ROW, [0.0] * 8, [float(i) for i in range(8)]]
    for row in rows:
        reply = post(f"{serving.inference_url}/predictions/tabular", json.dumps(row).encode(),
                     "application/json")
        assert reply.status == 200, reply.body
        with torch.no_grad():
            expected = eager_tabular(torch.tensor([row]))[0]
        assert torch.allclose(torch.tensor(reply.json()), expected, atol=1e-5)


MALFORMED = {
    "wrong shape": (json.dumps(ROW[:5]).encode(), "data: shape [5]: the model takes one item "
                                                  "of shape [8]"),
    "non-numeric": (json.dumps(ROW[:7] + ["seven"]).encode(), "data: 'seven' is not a number"),
    "wrong datatype": (json.dumps({"inputs": [{"name": "features", "shape": [8],
                                               "datatype": "INT64", "data": [1] * 8}]}).encode(),
                       'inputs[0] "features": datatype INT64: this model takes FP32'),
    "count mismatch": (v2_request(ROW[:6]), "shape [1, 8] holds 8 elements, data has 6"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_tensor_gets_a_4xx_naming_it_and_the_worker_keeps_serving(
        serving: server.TorchServe, case: str) -> None:
    body, message = MALFORMED[case]
    before = serving.worker_pids("tabular")
    for path in ("/predictions/tabular", "/v2/models/tabular/infer"):
        reply = post(serving.inference_url + path, body, "application/json")
        assert 400 <= reply.status < 500 and message in reply.json()["error"], reply.body
    assert serving.worker_pids("tabular") == before and before
    good = post(f"{serving.inference_url}/predictions/tabular", json.dumps(ROW).encode(),
                "application/json")
    assert good.status == 200
