"""The product end to end: real TorchServe on 127.0.0.1 serving the three archives through
handlers/ipex_handler.py; answers compared with the eager models in this process.

The expected answers are an independent oracle: this file decodes, crops and normalises
images with plain Pillow + numpy and tokenises text with the `tokenizers` library and the
archive's own tokenizer.json, reading sizes, mean/std and max_length from the archive's
model-config.yaml. Nothing of handlers/tasks runs on this side, so a pre-processing bug
(channel order, normalisation, crop, padding) makes the answers differ. (Checked: with R
and B swapped in handlers/tasks/image.py the ResNet-50 tests fail.)
"""

from __future__ import annotations

import base64
import io
import json
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import yaml
from PIL import Image
from tokenizers import Tokenizer

from benchmarks import loopback_torchserve as server
from benchmarks.loopback_torchserve import post
from tests.support.itt import TORCH_DOMAIN, itt_env, read_itt_events
from tests.support.models import eager_model
from torchserve_cpu.model_store.build import STORE_DIR, build_archive

REPO = Path(__file__).resolve().parents[2]
IMAGE = STORE_DIR / "samples" / "shapes.jpg"
# the answers compared here are by class index: `response: detailed` (index, label,
# probability; logits); the default, TorchServe's {label: probability}, is test_first_hour's
DETAILED = {"response": "detailed"}
SENTENCES = ["A cat sits on the warm windowsill.", "Stock markets fell sharply on Monday.",
             STORE_DIR.joinpath("samples", "sentence.txt").read_text().strip()]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("store")
    build_archive("resnet50", out, workers=1, batch_size=4, max_batch_delay_ms=300,
                  handler_overrides=DETAILED)
    build_archive("minilm", out, workers=1)
    build_archive("bert", out, workers=1, handler_overrides={"max_length": 64, **DETAILED})
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


# -- the oracle: the archive's own files, plain Pillow / numpy / tokenizers -------------

# torchvision's ImageNet normalisation on 0..1 pixels: what the handler must apply when
# the archive's config names no mean/std of its own
IMAGENET_MEAN_01, IMAGENET_STD_01 = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def archive_member(store: Path, model: str, name: str) -> bytes:
    with zipfile.ZipFile(store / f"{model}.mar") as archive:
        return archive.read(name)


def handler_section(store: Path, model: str) -> dict:
    return yaml.safe_load(archive_member(store, model, "model-config.yaml")).get("handler") or {}


def reference_image(data: bytes, section: dict) -> torch.Tensor:
    """The model input for one image, as torchvision's classification recipe makes it:
    RGB, short side resized to `resize_size`, centre `image_size` square (one bilinear
    resize of the source square that lands there), (x - mean) / std per channel, CHW.
    """
    size, resize = section.get("image_size", 224), section.get("resize_size", 256)
    mean = np.array(section.get("mean", [255 * m for m in IMAGENET_MEAN_01]))
    std = np.array(section.get("std", [255 * s for s in IMAGENET_STD_01]))
    image = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = image.size
    side = size * min(width, height) / resize  # source pixels that become the crop
    box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
    pixels = np.asarray(image.resize((size, size), Image.BILINEAR, box=box), dtype=np.float64)
    chw = ((pixels - mean) / std).transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(chw, dtype=np.float32)).unsqueeze(0)


def expected_topk(store: Path, data: bytes) -> tuple[list[int], torch.Tensor]:
    with torch.no_grad():
        logits = eager_model("resnet50")(reference_image(data, handler_section(store, "resnet50")))
    top = torch.softmax(logits, dim=1).topk(5)
    return top.indices[0].tolist(), top.values[0]


def reference_text(store: Path, model: str, text: str) -> tuple[torch.Tensor, ...]:
    """input_ids, attention_mask, token_type_ids from the archive's tokenizer.json, padded
    to the archive's max_length."""
    length = handler_section(store, model).get("max_length", 128)
    tokenizer = Tokenizer.from_str(archive_member(store, model, "tokenizer.json").decode())
    tokenizer.enable_truncation(length)
    tokenizer.enable_padding(length=length, pad_id=tokenizer.token_to_id("[PAD]"),
                             pad_token="[PAD]")
    encoding = tokenizer.encode(text)
    return tuple(torch.tensor([values]) for values in
                 (encoding.ids, encoding.attention_mask, encoding.type_ids))


def assert_topk_as_expected(reply, store: Path, data: bytes) -> None:
    assert reply.status == 200, reply.body
    indices, probabilities = expected_topk(store, data)
    served = reply.json()["topk"]
    assert [entry["index"] for entry in served] == indices
    # the served graph is an fp32 rewrite of eager (its own gate: max-abs 1e-3 of the
    # largest logit); an R/B swap moves these by 0.09 and more
    torch.testing.assert_close(torch.tensor([entry["probability"] for entry in served]),
                               probabilities, atol=2e-3, rtol=0)


def test_resnet_topk_equals_eager(serving: server.TorchServe, store: Path) -> None:
    data = IMAGE.read_bytes()
    assert_topk_as_expected(predict(serving, "resnet50", data, "image/jpeg"), store, data)


def test_resnet_accepts_png_and_base64_json(serving: server.TorchServe, store: Path) -> None:
    png = (STORE_DIR / "samples" / "shapes.png").read_bytes()
    assert_topk_as_expected(predict(serving, "resnet50", png, "image/png"), store, png)
    body = json.dumps({"data": base64.b64encode(IMAGE.read_bytes()).decode()}).encode()
    reply = predict(serving, "resnet50", body, "application/json")
    assert_topk_as_expected(reply, store, IMAGE.read_bytes())


def test_minilm_embeddings_match_eager(serving: server.TorchServe, store: Path) -> None:
    model = eager_model("minilm")
    for sentence in SENTENCES:
        reply = predict(serving, "minilm", sentence.encode(), "text/plain")
        assert reply.status == 200, reply.body
        served = torch.tensor(reply.json()["embedding"])
        with torch.no_grad():
            expected = model(*reference_text(store, "minilm", sentence))[0]
        assert torch.nn.functional.cosine_similarity(served, expected, dim=0) >= 0.9999
        assert served.norm() == pytest.approx(1.0, abs=1e-4)


def test_bert_logits_match_eager(serving: server.TorchServe, store: Path) -> None:
    assert handler_section(store, "bert")["max_length"] == 64  # padding is not the default
    reply = predict(serving, "bert", json.dumps({"text": SENTENCES[0]}).encode(),
                    "application/json")
    assert reply.status == 200, reply.body
    with torch.no_grad():
        expected = eager_model("bert")(*reference_text(store, "bert", SENTENCES[0]))[0]
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
