import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from torchserve_cpu.handlers.errors import BadInput
from torchserve_cpu.handlers.settings import HandlerSettings
from torchserve_cpu.handlers.tasks.image import ImageClassification, center_crop_box


def encoded(width: int, height: int, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture()
def task(tmp_path) -> ImageClassification:
    return ImageClassification(HandlerSettings(max_image_pixels=5_000_000), tmp_path)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_decodes_to_crop(task: ImageClassification, fmt: str) -> None:
    pixels = task.decode(encoded(500, 375, fmt), "image/jpeg")
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8


def test_base64_json(task: ImageClassification) -> None:
    body = json.dumps({"data": base64.b64encode(encoded(64, 64)).decode()}).encode()
    assert task.decode(body, "application/json").shape == (224, 224, 3)
    assert task.decode({"image": base64.b64encode(encoded(64, 64)).decode()}, None).shape[0] == 224


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (b"", None, 400, "empty"),
        (b"not an image at all", None, 400, "cannot decode"),
        (encoded(64, 64)[:200], None, 400, "cannot decode"),
        (b'{"data": "%%%"}', "application/json", 400, "base64"),
        (b'{"data": ', "application/json", 400, "does not parse"),
        (b'{"other": 1}', "application/json", 400, '"data"'),
        (encoded(64, 64), "audio/wav", 415, "content type"),
        (encoded(3000, 2000), None, 413, "exceeds the limit"),
    ],
)
def test_bad_images(task: ImageClassification, body: bytes, content_type: str | None,
                    status: int, message: str) -> None:
    with pytest.raises(BadInput, match=message) as caught:
        task.decode(body, content_type)
    assert caught.value.status == status


def test_collate_is_channels_last_and_normalized(task: ImageClassification) -> None:
    white = np.full((224, 224, 3), 255, dtype=np.uint8)
    (batch,) = task.collate([white, white])
    assert batch.shape == (2, 3, 224, 224)
    assert batch.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(batch[0, :, 0, 0], torch.tensor([2.2489, 2.4286, 2.6400]), atol=1e-3)


def test_center_crop_box_matches_resize_then_crop() -> None:
    left, top, right, bottom = center_crop_box(500, 375, 256, 224)
    assert right - left == pytest.approx(375 * 224 / 256)
    assert (left + right) / 2 == pytest.approx(250) and (top + bottom) / 2 == pytest.approx(187.5)


def test_answer_topk(tmp_path) -> None:
    task = ImageClassification(HandlerSettings(response="detailed"), tmp_path)
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0, -1.0, 0.5]])
    (answer,) = task.answer(logits)
    assert [entry["index"] for entry in answer["topk"]] == [1, 3, 2, 5, 0]
    assert sum(entry["probability"] for entry in answer["topk"]) < 1.0
