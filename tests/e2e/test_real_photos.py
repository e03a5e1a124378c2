"""Real photos, real answers: EfficientNet-Lite0 with its ImageNet weights on real TorchServe,
sent photos as cameras, phones and browsers send them.

The expected answers come from an oracle that shares no code with the server's
pre-processing: known pixels (decoded here with plain Pillow, turned and composited with
numpy), the centre crop the model expects (short side to 256, centre 224: one Pillow
resize of the crop's source box), (pixel - 127) / 128 in numpy, then the eager model. A
pre-processing bug in the handler (16-bit clipped, EXIF ignored, black under transparency,
wrong mean/std, a form upload refused) changes the served answer and fails here.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import loopback_torchserve as server
from benchmarks.loopback_torchserve import Reply, post
from tests.support.models import eager_model
from torchserve_cpu.model_store.build import build_archive

skimage = pytest.importorskip("skimage", reason="scikit-image ships the photos ([test] extra)")

REPO = Path(__file__).resolve().parents[2]
PHOTOS = Path(skimage.__file__).parent / "data"
MODEL = "efficientnet_lite0"
# ImageNet-1k classes by index, written out here rather than read from the archive.
CATS = {281: "tabby", 282: "tiger cat", 283: "Persian cat", 284: "Siamese cat",
        285: "Egyptian cat"}
CUPS = {504: "coffee mug", 967: "espresso", 968: "cup"}
ORIENTATION = 0x0112  # EXIF tag


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory):
    store = tmp_path_factory.mktemp("store")
    # answers compared by class index (detailed); the stock shape: test_first_hour.py
    build_archive(MODEL, store, workers=1, handler_overrides={"response": "detailed"})
    build_archive("minilm", store, workers=1)
    ts = server.start(REPO / "config" / "config.properties", store,
                      [f"{MODEL}.mar", "minilm.mar"], run_dir=tmp_path_factory.mktemp("ts"))
    try:
        ts.wait_ready([MODEL, "minilm"], timeout=600)
        yield ts
    finally:
        ts.stop()


@pytest.fixture(scope="module")
def chelsea() -> np.ndarray:
    """The cat photo's known pixels, H x W x 3 uint8 (the PNG is 8-bit RGB)."""
    with Image.open(PHOTOS / "chelsea.png") as image:
        assert image.mode == "RGB"
        return np.array(image)


def oracle(pixels: np.ndarray) -> np.ndarray:
    """Class probabilities for upright 8-bit RGB pixels, by the model's own recipe."""
    height, width = pixels.shape[:2]
    side = min(width, height) * 224 / 256
    box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
    crop = np.asarray(Image.fromarray(pixels).resize((224, 224), Image.BILINEAR, box=box))
    normalised = (crop.astype(np.float32) - 127.0) / 128.0
    batch = torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)[None]))
    with torch.no_grad():
        return torch.softmax(eager_model(MODEL)(batch), dim=1)[0].numpy()


def encoded(pixels: np.ndarray, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt, **params)
    return out.getvalue()


def decoded(data: bytes) -> np.ndarray:
    """Stored pixels as plain Pillow decodes them (no EXIF handling)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.array(image.convert("RGB"))


def png48(pixels16: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG, written by hand (Pillow cannot write one)."""
    import struct
    import zlib

    height, width, _ = pixels16.shape
    raw = b"".join(b"\0" + pixels16[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def form(field: str, filename: str, content_type: str, data: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body as a browser's <form enctype=multipart/form-data> sends
    one file."""
    boundary = "----WebKitFormBoundary7MA4YWxkTrZu0gW"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
            f"filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n").encode()
    body += data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def predict(ts: server.TorchServe, body: bytes, content_type: str, model: str = MODEL) -> Reply:
    return post(f"{ts.inference_url}/predictions/{model}", body, content_type)


def assert_matches_oracle(reply: Reply, expected: np.ndarray) -> int:
    """Same top-1 as the oracle, every served probability within 1e-3 of it; the top-1."""
    assert reply.status == 200, reply.body
    topk = reply.json()["topk"]
    assert topk[0]["index"] == int(expected.argmax()), (topk, expected.argsort()[-3:])
    for entry in topk:
        assert entry["probability"] == pytest.approx(expected[entry["index"]], abs=1e-3)
    return topk[0]["index"]


def test_cat_photo_is_a_cat_with_its_name(serving: server.TorchServe,
                                          chelsea: np.ndarray) -> None:
    reply = predict(serving, (PHOTOS / "chelsea.png").read_bytes(), "image/png")
    top1 = assert_matches_oracle(reply, oracle(chelsea))
    assert top1 in CATS and reply.json()["topk"][0]["label"] == CATS[top1]


def test_coffee_photo_is_a_cup(serving: server.TorchServe) -> None:
    data = (PHOTOS / "coffee.png").read_bytes()
    reply = predict(serving, data, "image/png")
    top1 = assert_matches_oracle(reply, oracle(decoded(data)))
    assert top1 in CUPS and reply.json()["topk"][0]["label"] == CUPS[top1]


def test_the_same_photo_however_it_is_sent(serving: server.TorchServe,
                                           chelsea: np.ndarray) -> None:
    """8-bit JPEG, 48-bit PNG, a phone's sideways JPEG, RGBA PNG, a browser form upload:
    each matches the oracle on its own known pixels and has the top-1 of the same picture
    sent as a plain 8-bit PNG."""
    png = (PHOTOS / "chelsea.png").read_bytes()
    jpeg = encoded(chelsea, "JPEG", quality=95)
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # stored turned 90 degrees left; a viewer turns it right
    sideways = encoded(np.rot90(chelsea, k=1), "JPEG", quality=95, exif=exif.tobytes())
    # A transparent 24-pixel frame with random colour under it, reaching into the crop. On
    # white it is the picture `over_white`; shown with its stored colours (or black) the
    # model's top-1 changes (tiger cat 0.43 -> Egyptian cat 0.43 / 0.47).
    rgba = np.dstack([chelsea, np.full(chelsea.shape[:2], 255, np.uint8)])
    frame = np.ones(chelsea.shape[:2], bool)
    frame[24:-24, 24:-24] = False
    rgba[frame] = np.random.default_rng(0).integers(0, 256, (int(frame.sum()), 4))
    rgba[frame, 3] = 0
    over_white = chelsea.copy()
    over_white[frame] = 255
    upload, upload_type = form("data", "chelsea.png", "image/png", png)
    cases = {  # name: (body, content type, its known pixels, the picture it shows)
        "8-bit JPEG": (jpeg, "image/jpeg", decoded(jpeg), chelsea),
        "16-bit RGB PNG": (png48(chelsea.astype(np.uint16) * 257), "image/png", chelsea,
                           chelsea),
        "EXIF Orientation=6 JPEG": (sideways, "image/jpeg", np.rot90(decoded(sideways), k=-1),
                                    chelsea),
        "RGBA PNG": (encoded(rgba, "PNG"), "image/png", over_white, over_white),
        "multipart form upload": (upload, upload_type, chelsea, chelsea),
    }
    for name, (body, content_type, pixels, picture) in cases.items():
        top1 = assert_matches_oracle(predict(serving, body, content_type), oracle(pixels))
        plain = predict(serving, encoded(picture, "PNG"), "image/png")
        assert top1 == assert_matches_oracle(plain, oracle(picture)), name
        assert top1 in CATS, name


def test_16_bit_gray_png_is_scaled(serving: server.TorchServe, chelsea: np.ndarray) -> None:
    """The photo in 16-bit grayscale with sub-8-bit detail: scaled to the 8-bit gray."""
    luma = chelsea.astype(np.float64) @ [0.299, 0.587, 0.114]
    gray8 = np.rint(luma).astype(np.uint16)
    detail = np.random.default_rng(1).integers(0, 128, gray8.shape, dtype=np.uint16)
    body = encoded(gray8 * 257 + detail, "PNG")  # v * 257 + d scales back to v for d < 128
    assert Image.open(io.BytesIO(body)).mode == "I;16"
    expected = oracle(np.repeat(gray8.astype(np.uint8)[..., None], 3, axis=2))
    assert assert_matches_oracle(predict(serving, body, "image/png"), expected) in CATS


def test_form_upload_of_text(serving: server.TorchServe) -> None:
    """A text file through a form: the same embedding as the same text as the body."""
    sentence = b"A cat sits on the warm windowsill."
    upload, upload_type = form("data", "sentence.txt", "text/plain", sentence)
    as_form = predict(serving, upload, upload_type, "minilm")
    as_body = predict(serving, sentence, "text/plain", "minilm")
    assert as_form.status == as_body.status == 200, (as_form.body, as_body.body)
    assert json.loads(as_form.body) == json.loads(as_body.body)


def test_form_upload_under_another_name_is_told_the_field(serving: server.TorchServe) -> None:
    upload, upload_type = form("file", "chelsea.png", "image/png",
                               (PHOTOS / "chelsea.png").read_bytes())
    reply = predict(serving, upload, upload_type)
    assert reply.status == 400 and "form field named data" in reply.json()["error"]
