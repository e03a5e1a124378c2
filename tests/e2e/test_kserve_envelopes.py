"""KServe envelopes end to end: real TorchServe on 127.0.0.1 with `service_envelope=kserve`
and then `kservev2`, our handler behind it, requests on the KServe paths.

Good instances (a base64 image under "data" / a v2 BYTES input; text for MiniLM) are
answered as the eager models answer them; a request with a bad instance among good ones
gets a 400 naming that instance, the good ones still answered in their places; the worker
that read it lives on. With server-side batching the envelopes cannot answer (they read the
first request only): every request of such a batch gets a 503, from our handler with the
cause under kservev2, TorchServe's own "number of batch response mismatched" under kserve.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from benchmarks import loopback_torchserve as server
from tests.support.models import eager_model, model_dir_for
from torchserve_cpu.handlers.model_config import parse_settings
from torchserve_cpu.handlers.tasks import make_task
from torchserve_cpu.model_store.build import STORE_DIR, build_archive

REPO = Path(__file__).resolve().parents[2]
IMAGE = (STORE_DIR / "samples" / "shapes.jpg").read_bytes()
IMAGE_B64 = base64.b64encode(IMAGE).decode()
NOT_AN_IMAGE_B64 = base64.b64encode(b"definitely not an image").decode()
SENTENCES = ["A cat sits on the warm windowsill.", "Stock markets fell sharply on Monday."]
BATCH = 3  # batchSize of resnet50_batched
MODELS = ["resnet50", "resnet50_batched", "minilm"]


@dataclass(frozen=True)
class Protocol:
    """How one envelope's clients send instances and read answers."""

    envelope: str

    def path(self, model: str) -> str:
        if self.envelope == "kserve":
            return f"/v1/models/{model}:predict"
        return f"/v2/models/{model}/infer"

    def body(self, values: list[str], request_id: str | None = None) -> dict:
        if self.envelope == "kserve":
            return {"instances": [{"data": value} for value in values]}
        inputs = [{"name": f"input-{index}", "shape": [1], "datatype": "BYTES", "data": [value]}
                  for index, value in enumerate(values)]
        return {"inputs": inputs, **({"id": request_id} if request_id else {})}

    def label(self, index: int) -> str:
        if self.envelope == "kserve":
            return f"instances[{index}]"
        return f'inputs[{index}] "input-{index}"'

    def answers(self, reply: dict) -> list:
        if self.envelope == "kserve":
            return reply["predictions"]
        assert [output["name"] for output in reply["outputs"]] == [
            f"input-{index}" for index in range(len(reply["outputs"]))]
        return [output["data"][0] for output in reply["outputs"]]


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str  # the HTTP status line's phrase: TorchServe puts the handler's message there
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def call(url: str, body: dict, timeout: float = 120) -> Answer:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Answer(response.status, response.reason, response.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.reason, error.read())


@dataclass(frozen=True)
class Serving:
    ts: server.TorchServe
    protocol: Protocol
    workers: dict[str, list[int]]

    def send(self, model: str, body: dict, path: str | None = None) -> Answer:
        return call(self.ts.inference_url + (path or self.protocol.path(model)), body)

    def assert_same_workers(self) -> None:
        assert {name: self.ts.worker_pids(name) for name in MODELS} == self.workers


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kserve-store")
    detailed = {"response": "detailed"}  # answers compared by class index
    build_archive("resnet50", out, workers=1, handler_overrides=detailed)
    build_archive("resnet50", out, workers=1, batch_size=BATCH, max_batch_delay_ms=2000,
                  archive_name="resnet50_batched", handler_overrides=detailed)
    build_archive("minilm", out, workers=1)
    return out


@pytest.fixture(scope="module", params=["kserve", "kservev2"])
def serving(request: pytest.FixtureRequest, store: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    envelope = request.param
    run_dir = tmp_path_factory.mktemp(f"ts-{envelope}")
    config = run_dir / "config.properties.in"
    config.write_text((REPO / "config" / "config.properties").read_text()
                      + f"service_envelope={envelope}\n")
    ts = server.start(config, store, [f"{name}.mar" for name in MODELS], run_dir=run_dir)
    try:
        ts.wait_ready(MODELS, timeout=600)
        yield Serving(ts, Protocol(envelope), {name: ts.worker_pids(name) for name in MODELS})
    finally:
        ts.stop()


@pytest.fixture(scope="module")
def eager_topk(tmp_path_factory: pytest.TempPathFactory) -> list[int]:
    model_dir = model_dir_for("resnet50", tmp_path_factory.mktemp("resnet50"))
    task = make_task(parse_settings({"task": "image_classification"}), model_dir)
    with torch.no_grad():
        logits = eager_model("resnet50")(*task.collate([task.decode(IMAGE, None)]))
    return logits.topk(5).indices[0].tolist()


@pytest.fixture(scope="module")
def eager_embeddings(tmp_path_factory: pytest.TempPathFactory) -> torch.Tensor:
    model_dir = model_dir_for("minilm", tmp_path_factory.mktemp("minilm"))
    task = make_task(parse_settings({"task": "text_embedding"}), model_dir)
    samples = [task.decode(sentence.encode(), None) for sentence in SENTENCES]
    with torch.no_grad():
        return eager_model("minilm")(*task.collate(samples))


def topk(answer: dict) -> list[int]:
    return [entry["index"] for entry in answer["topk"]]


def test_good_images_are_answered(serving: Serving, eager_topk: list[int]) -> None:
    body = serving.protocol.body([IMAGE_B64, IMAGE_B64])
    for path in (None, "/predictions/resnet50"):  # KServe's path and TorchServe's own
        answer = serving.send("resnet50", body, path)
        assert answer.status == 200, answer.body[:300]
        assert [topk(item) for item in serving.protocol.answers(answer.json())] == [
            eager_topk, eager_topk]


def test_good_texts_are_answered(serving: Serving, eager_embeddings: torch.Tensor) -> None:
    answer = serving.send("minilm", serving.protocol.body(SENTENCES))
    assert answer.status == 200, answer.body[:300]
    served = torch.tensor([item["embedding"] for item in serving.protocol.answers(answer.json())])
    assert torch.nn.functional.cosine_similarity(served, eager_embeddings, dim=1).min() >= 0.999


def test_bad_image_among_good_is_named_in_a_400(serving: Serving, eager_topk: list[int]) -> None:
    protocol = serving.protocol
    answer = serving.send("resnet50", protocol.body([IMAGE_B64, NOT_AN_IMAGE_B64, IMAGE_B64]))
    assert answer.status == 400, answer.body[:300]
    assert answer.reason.startswith(f"1 of 3 rejected: {protocol.label(1)}: cannot decode image")
    good, bad, also_good = protocol.answers(answer.json())
    assert topk(good) == topk(also_good) == eager_topk  # still answered, in their places
    assert bad["status"] == 400
    assert bad["error"].startswith(f"{protocol.label(1)}: cannot decode image")
    serving.assert_same_workers()


def test_bad_texts_among_good_are_named_in_a_400(serving: Serving) -> None:
    protocol = serving.protocol
    answer = serving.send("minilm", protocol.body(["  ", SENTENCES[0], ""]))
    assert answer.status == 400, answer.body[:300]
    assert answer.reason == (f"2 of 3 rejected: {protocol.label(0)}: empty text; "
                             f"{protocol.label(2)}: empty text")
    first, served, last = protocol.answers(answer.json())
    assert first == {"error": f"{protocol.label(0)}: empty text", "status": 400}
    assert len(served["embedding"]) == 384 and "error" in last
    serving.assert_same_workers()


def test_no_instances_is_a_400(serving: Serving) -> None:
    empty = {"instances": []} if serving.protocol.envelope == "kserve" else {"inputs": []}
    answer = serving.send("resnet50", empty)
    assert answer.status == 400, answer.body[:300]
    assert "no list of instances" in answer.json()["message"]
    serving.assert_same_workers()


def test_v2_ids_belong_to_their_request(serving: Serving) -> None:
    if serving.protocol.envelope != "kservev2":
        pytest.skip("request ids are KServe v2's")
    protocol = serving.protocol
    bad = serving.send("resnet50", protocol.body([NOT_AN_IMAGE_B64], request_id="bad-one"))
    assert (bad.status, bad.json()["id"]) == (400, "bad-one")
    refused = serving.send("resnet50", {"id": "refused-one", "inputs": []})
    assert refused.status == 400
    # kservev2.py keeps the id on the context until it formats an answer; a refusal
    # skips that, so the handler drops it: the next id-less request gets its own.
    after = serving.send("resnet50", protocol.body([IMAGE_B64]))
    assert after.status == 200 and after.json()["id"] not in ("bad-one", "refused-one")


def test_batched_requests_fail_loudly_never_silently(serving: Serving) -> None:
    body = serving.protocol.body([IMAGE_B64])
    with ThreadPoolExecutor(BATCH) as pool:
        answers = list(pool.map(lambda _: serving.send("resnet50_batched", body), range(BATCH)))
    assert [answer.status for answer in answers] == [503] * BATCH
    messages = {answer.json()["message"] for answer in answers}
    if serving.protocol.envelope == "kservev2":
        assert messages == {
            f"the kservev2 envelope reads only the first of the {BATCH} requests TorchServe "
            "batched together, so none can be answered; set batchSize: 1 in the model's "
            "model-config.yaml to serve KServe requests"}
    else:
        assert messages == {"number of batch response mismatched"}  # TorchServe's own
    alone = serving.send("resnet50_batched", body)  # a batch of one is answered
    assert alone.status == 200, alone.body[:300]
    serving.assert_same_workers()
