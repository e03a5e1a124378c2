"""The product end to end: real TorchServe on 127.0.0.1 serving the three archives through
handlers/ipex_handler.py; answers compared with the eager models in this process."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import torch

from benchmarks import loopback_torchserve as server
from benchmarks.loopback_torchserve import post
from tests.support.itt import TORCH_DOMAIN, itt_env, read_itt_events
from tests.support.models import eager_model, model_dir_for
from torchserve_cpu.handlers.settings import parse_settings
from torchserve_cpu.handlers.tasks import make_task
from torchserve_cpu.model_store.build import STORE_DIR, build_archive

REPO = Path(__file__).resolve().parents[2]
IMAGE = STORE_DIR / "samples" / "shapes.jpg"
SENTENCES = ["A cat sits on the warm windowsill.", "Stock markets fell sharply on Monday.",
             STORE_DIR.joinpath("samples", "sentence.txt").read_text().strip()]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("store")
    build_archive("resnet50", out, workers=1, batch_size=4, max_batch_delay_ms=300)
    build_archive("minilm", out, workers=1)
    build_archive("bert", out, workers=1, handler_overrides={"max_length": 64})
    return out


@pytest.fixture(scope="module")
def itt_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("itt") / "events.log"


@pytest.fixture(scope="module")
def serving(store: Path, itt_collector: Path, itt_log: Path, tmp_path_factory):
    env = itt_env(itt_collector, itt_log, domain=TORCH_DOMAIN, base={})
    ts = server.start(REPO / "config" / "config.properties", store,
                      ["resnet50.mar", "minilm.mar", "bert.mar"], env=env,
                      run_dir=tmp_path_factory.mktemp("ts"))
    try:
        ts.wait_ready(["resnet50", "minilm", "bert"], timeout=600)
        yield ts
    finally:
        ts.stop()


def predict(ts: server.TorchServe, model: str, body: bytes, content_type: str | None = None):
    return post(f"{ts.inference_url}/predictions/{model}", body, content_type)


def test_resnet_topk_equals_eager(serving: server.TorchServe, tmp_path: Path) -> None:
    reply = predict(serving, "resnet50", IMAGE.read_bytes(), "image/jpeg")
    assert reply.status == 200, reply.body
    served = [entry["index"] for entry in reply.json()["topk"]]
    task = make_task(parse_settings({"task": "image_classification"}), tmp_path)
    with torch.no_grad():
        logits = eager_model("resnet50")(*task.collate([task.decode(IMAGE.read_bytes(), None)]))
    assert served == logits.topk(5).indices[0].tolist()


def test_resnet_accepts_png_and_base64_json(serving: server.TorchServe) -> None:
    png = (STORE_DIR / "samples" / "shapes.png").read_bytes()
    assert predict(serving, "resnet50", png, "image/png").status == 200
    body = json.dumps({"data": base64.b64encode(IMAGE.read_bytes()).decode()}).encode()
    assert predict(serving, "resnet50", body, "application/json").status == 200


def test_minilm_embeddings_match_eager(serving: server.TorchServe, tmp_path: Path) -> None:
    task = make_task(parse_settings({"task": "text_embedding"}), model_dir_for("minilm", tmp_path))
    model = eager_model("minilm")
    for sentence in SENTENCES:
        reply = predict(serving, "minilm", sentence.encode(), "text/plain")
        assert reply.status == 200, reply.body
        served = torch.tensor(reply.json()["embedding"])
        with torch.no_grad():
            expected = model(*task.collate([task.decode(sentence.encode(), None)]))[0]
        assert torch.nn.functional.cosine_similarity(served, expected, dim=0) >= 0.999
        assert served.norm() == pytest.approx(1.0, abs=1e-4)


def test_bert_logits_match_eager(serving: server.TorchServe, tmp_path: Path) -> None:
    task = make_task(parse_settings({"task": "text_classification", "max_length": 64}),
                     model_dir_for("bert", tmp_path))
    model = eager_model("bert")
    reply = predict(serving, "bert", json.dumps({"text": SENTENCES[0]}).encode(),
                    "application/json")
    assert reply.status == 200, reply.body
    with torch.no_grad():
        expected = model(*task.collate([task.decode(SENTENCES[0].encode(), None)]))[0]
    assert torch.allclose(torch.tensor(reply.json()["logits"]), expected, atol=1e-4)


def test_bad_input_gets_4xx_and_worker_survives(serving: server.TorchServe) -> None:
    pids_before = serving.worker_pids("resnet50")
    cases = [(b"", None), (b"definitely not a jpeg", "image/jpeg"),
             (IMAGE.read_bytes()[:500], "image/jpeg"), (b'{"data": "%%"}', "application/json")]
    for body, content_type in cases:
        reply = predict(serving, "resnet50", body, content_type)
        assert 400 <= reply.status < 500, (body[:20], reply.status, reply.body)
        assert reply.json()["error"]
    assert predict(serving, "minilm", b"\xff\xfe", "text/plain").status == 400
    assert predict(serving, "resnet50", IMAGE.read_bytes(), "image/jpeg").status == 200
    assert serving.worker_pids("resnet50") == pids_before


def test_batch_with_one_bad_item(serving: server.TorchServe) -> None:
    bodies = [IMAGE.read_bytes(), b"garbage", IMAGE.read_bytes(), IMAGE.read_bytes()]
    with ThreadPoolExecutor(len(bodies)) as pool:
        replies = list(pool.map(lambda b: predict(serving, "resnet50", b, "image/jpeg"), bodies))
    assert [r.status for r in replies] == [200, 400, 200, 200]
    assert len({json.dumps(r.json()["topk"]) for r in replies if r.status == 200}) == 1


def test_itt_ranges_reach_the_collector(serving: server.TorchServe, itt_log: Path) -> None:
    assert predict(serving, "resnet50", IMAGE.read_bytes(), "image/jpeg").status == 200
    names = [name for kind, name in read_itt_events(itt_log) if kind == "begin"]
    for stage in ("preprocess", "inference", "postprocess"):
        assert f"resnet50.{stage}" in names


def test_clean_shutdown(store: Path, tmp_path: Path) -> None:
    ts = server.start(REPO / "config" / "config.properties", store, ["resnet50.mar"],
                      run_dir=tmp_path)
    ts.wait_ready(["resnet50"], timeout=300)
    workers = ts.worker_pids("resnet50")
    assert workers
    ts.stop()
    assert not ts.alive()
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
                   for pid in workers)
