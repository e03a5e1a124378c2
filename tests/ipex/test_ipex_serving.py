"""Real TorchServe in the IPEX lane: workers load through ipex.optimize, say so, and answer
like the eager models (ResNet-50 fp32, BERT-base bf16)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from benchmarks import loopback_torchserve as server
from benchmarks.loopback_torchserve import post
from tests.support.ipex_lane import IPEX, requires_ipex
from tests.support.models import eager_model, model_dir_for
from torchserve_cpu.handlers.model_config import parse_settings
from torchserve_cpu.handlers.tasks import make_task
from torchserve_cpu.model_store.build import STORE_DIR, build_archive

pytestmark = [requires_ipex, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
IMAGE = STORE_DIR / "samples" / "shapes.jpg"
SENTENCE = "A cat sits on the warm windowsill."


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory):
    store = tmp_path_factory.mktemp("store")
    build_archive("resnet50", store, workers=1, handler_overrides={"response": "detailed"})
    build_archive("bert", store, workers=1, handler_overrides={"max_length": 64, "dtype": "bf16",
                                                               "response": "detailed"})
    ts = server.start(REPO / "config" / "config.properties", store, ["resnet50.mar", "bert.mar"],
                      run_dir=tmp_path_factory.mktemp("ts"))
    try:
        ts.wait_ready(["resnet50", "bert"], timeout=600)
        yield ts
    finally:
        ts.stop()


def ready_line(ts: server.TorchServe, model: str) -> str:
    log = (ts.log_dir / "model_log.log").read_text(errors="replace")
    lines = [line for line in log.splitlines() if f"ready model={model} " in line]
    assert lines, log[-3000:]
    return lines[-1]


@pytest.mark.parametrize(("model", "dtype"), [("resnet50", "fp32"), ("bert", "bf16")])
def test_load_log_says_ipex_was_used(serving: server.TorchServe, model: str, dtype: str) -> None:
    line = ready_line(serving, model)
    assert f"ipex={IPEX.reason} " in line
    assert "pipeline=default[ipex_or_native>" in line and f"dtype={dtype} " in line
    assert re.search(rf"notes=\[[^\]]*'ipex: {re.escape(IPEX.reason)}'", line), line
    assert "rejected=[]" in line


def test_resnet_topk_equals_eager(serving: server.TorchServe, tmp_path: Path) -> None:
    reply = post(f"{serving.inference_url}/predictions/resnet50", IMAGE.read_bytes(),
                 "image/jpeg")
    assert reply.status == 200, reply.body
    task = make_task(parse_settings({"task": "image_classification"}), tmp_path)
    with torch.no_grad():
        logits = eager_model("resnet50")(*task.collate([task.decode(IMAGE.read_bytes(), None)]))
    assert [entry["index"] for entry in reply.json()["topk"]] == logits.topk(5).indices[0].tolist()


def test_bert_bf16_logits_close_to_eager(serving: server.TorchServe, tmp_path: Path) -> None:
    settings = parse_settings({"task": "text_classification", "max_length": 64})
    task = make_task(settings, model_dir_for("bert", tmp_path))
    reply = post(f"{serving.inference_url}/predictions/bert",
                 json.dumps({"text": SENTENCE}).encode(), "application/json")
    assert reply.status == 200, reply.body
    with torch.no_grad():
        expected = eager_model("bert")(*task.collate([task.decode(SENTENCE.encode(), None)]))[0]
    served = torch.tensor(reply.json()["logits"])
    cosine = torch.nn.functional.cosine_similarity(served, expected, dim=0)
    assert cosine >= settings.gate.min_cosine, cosine
