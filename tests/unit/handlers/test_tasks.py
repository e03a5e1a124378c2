"""The task table and what each task does besides decoding: request bodies, the crop box,
batching, example inputs and answers, with exact expected values."""

from __future__ import annotations

import base64
import builtins
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin

from torchserve_cpu.handlers.errors import BadInput
from torchserve_cpu.handlers.settings import HandlerSettings
from torchserve_cpu.handlers.tasks import TASKS, make_task
from torchserve_cpu.handlers.tasks.image import ImageClassification, center_crop_box, image_bytes
from torchserve_cpu.handlers.tasks.labels import read_labels
from torchserve_cpu.handlers.tasks.text import TextTask, load_tokenizer, request_text
from torchserve_cpu.model_store.build import minilm_dir

PNG = b"\x89PNG\r\n\x1a\n rest of the file"


@pytest.fixture()
def text_dir(tmp_path: Path) -> Path:
    (tmp_path / "tokenizer.json").write_bytes((minilm_dir() / "tokenizer.json").read_bytes())
    return tmp_path


def text_task(model_dir: Path, task: str = "text_embedding", **settings: object) -> TextTask:
    return TextTask(HandlerSettings(task=task, **settings), model_dir)  # type: ignore[arg-type]


# -- the table -------------------------------------------------------------------------

def test_make_task_builds_the_task_named(text_dir: Path) -> None:
    assert set(TASKS) == {"image_classification", "text_classification", "text_embedding",
                          "tensor"}
    image = make_task(HandlerSettings(), text_dir)
    assert isinstance(image, ImageClassification) and image.classifies
    embedding = make_task(HandlerSettings(task="text_embedding"), text_dir)
    assert isinstance(embedding, TextTask) and embedding.embeds and not embedding.classifies
    classes = make_task(HandlerSettings(task="text_classification"), text_dir)
    assert isinstance(classes, TextTask) and classes.classifies and not classes.embeds


def test_make_task_names_the_choices_for_an_unknown_task(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as caught:
        make_task(HandlerSettings(task="audio"), tmp_path)
    assert str(caught.value) == ("handler.task: 'audio' is not one of image_classification, "
                                 "text_classification, text_embedding, tensor")


def test_labels_read_as_torchserve_reads_them(tmp_path: Path) -> None:
    """ts/utils/util.py load_label_mapping: a list means its last name, the older
    object_type_names form is a list, anything but names is refused."""
    assert read_labels(tmp_path) is None
    (tmp_path / "index_to_name.json").write_text('{"0": "cat", "2": ["n0212", "dog"]}')
    assert read_labels(tmp_path) == {0: "cat", 2: "dog"}
    (tmp_path / "index_to_name.json").write_text('{"object_type_names": ["cat", "dog"]}')
    assert read_labels(tmp_path) == {0: "cat", 1: "dog"}
    for bad in ('{"0": 7}', '["cat"]', "{not json"):
        (tmp_path / "index_to_name.json").write_text(bad)
        with pytest.raises(ValueError, match=r"index_to_name\.json"):
            read_labels(tmp_path)


# -- image requests ------------------------------------------------------------------

@pytest.mark.parametrize(("body", "content_type"), [
    (PNG, "image/png"), (PNG, None), (bytearray(PNG), "application/octet-stream"),
    (PNG, "text/plain"), (json.dumps({"data": base64.b64encode(PNG).decode()}).encode(),
                          "application/json"),
    (json.dumps({"image": base64.b64encode(PNG).decode()}).encode(), None),
    ({"data": base64.b64encode(PNG).decode(), "image": "ignored"}, None),
    (base64.b64encode(PNG).decode(), None),
])
def test_image_bytes_from_every_accepted_body(body: object, content_type: str | None) -> None:
    data = image_bytes(body, content_type)
    assert data == PNG and type(data) is bytes


@pytest.mark.parametrize(("body", "content_type", "message", "status"), [
    (PNG, "video/mp4", "unsupported content type 'video/mp4': send image bytes or JSON", 415),
    (b"[1, 2", None, "body looks like JSON but does not parse: ", 400),
    (b"{\xff}", None, "body looks like JSON but does not parse: ", 400),
    (b"[1, 2]", None, "cannot read an image from a list body", 400),
    ({"data": 5}, None, 'JSON body needs a base64 string under "data" or "image"', 400),
    ({}, None, 'JSON body needs a base64 string under "data" or "image"', 400),
    ("not base64!", None, "image is not valid base64", 400),
    (7, None, "cannot read an image from a int body", 400),
])
def test_image_bytes_refuses_with_the_reason(body: object, content_type: str | None,
                                             message: str, status: int) -> None:
    with pytest.raises(BadInput) as caught:
        image_bytes(body, content_type)
    assert str(caught.value).startswith(message) and caught.value.status == status


def test_center_crop_box_exact() -> None:
    # 500x375, short side to 256 (scale 375/256), centre 224: 328.125 source pixels
    assert center_crop_box(500, 375, 256, 224) == (85.9375, 23.4375, 414.0625, 351.5625)
    assert center_crop_box(300, 600, 300, 300) == (0.0, 150.0, 300.0, 450.0)  # portrait
    assert center_crop_box(64, 64, 8, 8) == (0.0, 0.0, 64.0, 64.0)


def solid(width: int, height: int, colour: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, fmt)
    return out.getvalue()


def test_decode_crops_the_centre_at_the_configured_size(tmp_path: Path) -> None:
    # left third red, the rest blue: the centre crop of the short side is all blue
    pixels = np.zeros((60, 180, 3), dtype=np.uint8)
    pixels[:, :60] = (255, 0, 0)
    pixels[:, 60:] = (0, 0, 255)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    task = ImageClassification(HandlerSettings(image_size=16, resize_size=20), tmp_path)
    crop = task.decode(out.getvalue(), "image/png")
    assert crop.shape == (16, 16, 3) and crop.dtype == np.uint8
    assert (crop == (0, 0, 255)).all()


def test_decode_refuses_more_pixels_than_the_limit(tmp_path: Path) -> None:
    task = ImageClassification(HandlerSettings(max_image_pixels=100), tmp_path)
    assert task.decode(solid(10, 10, (1, 2, 3)), None).shape == (224, 224, 3)  # at the limit
    with pytest.raises(BadInput, match=r"^image of 11x10 pixels exceeds the limit of 100 pixels$"
                       ) as caught:
        task.decode(solid(11, 10, (1, 2, 3)), None)
    assert caught.value.status == 413


def test_decode_refuses_pillows_decompression_bombs_as_413(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    task = ImageClassification(HandlerSettings(), tmp_path)
    for size in ((8, 8), (11, 10)):  # Pillow warns above its limit, refuses above twice it
        with pytest.raises(BadInput, match="^image exceeds the pixel limit: ") as caught:
            task.decode(solid(*size, (1, 2, 3)), None)
        assert caught.value.status == 413


def test_decode_reads_jpeg_at_a_reduced_scale_near_the_target(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drafts = []
    original = JpegImagePlugin.JpegImageFile.draft

    def draft(self, mode, size):
        drafts.append((mode, size))
        return original(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", draft)
    task = ImageClassification(HandlerSettings(image_size=16, resize_size=20), tmp_path)
    crop = task.decode(solid(400, 300, (250, 10, 10), "JPEG"), None)
    assert drafts == [("RGB", (20, 20))]
    assert np.abs(crop.astype(int) - (250, 10, 10)).max() <= 3
    task.decode(solid(40, 30, (250, 10, 10), "PNG"), None)
    assert len(drafts) == 1  # PNG has no draft mode


def test_collate_normalises_each_channel_with_its_own_mean_and_std(tmp_path: Path) -> None:
    task = ImageClassification(HandlerSettings(mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 5.0)),
                               tmp_path)
    sample = np.empty((2, 3, 3), dtype=np.uint8)
    sample[..., 0], sample[..., 1], sample[..., 2] = 12, 28, 60
    other = np.zeros((2, 3, 3), dtype=np.uint8)
    (batch,) = task.collate([sample, other])
    assert batch.shape == (2, 3, 2, 3) and batch.dtype == torch.float32
    assert batch[0, :, 1, 2].tolist() == [1.0, 2.0, 6.0]
    assert batch[1, :, 0, 0].tolist() == [-5.0, -5.0, -6.0]


def test_image_example_inputs_are_seeded_and_sized(tmp_path: Path) -> None:
    task = ImageClassification(HandlerSettings(image_size=32, resize_size=32), tmp_path)
    (first,) = task.example_inputs(3)
    assert first.shape == (3, 3, 32, 32) and first.dtype == torch.float32
    assert torch.equal(first, task.example_inputs(3)[0])
    expected = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(first, expected)


def test_image_answer_names_labels_and_probabilities(tmp_path: Path) -> None:
    (tmp_path / "index_to_name.json").write_text('{"1": "one", "2": "two"}')
    task = ImageClassification(HandlerSettings(topk=2, response="detailed"), tmp_path)
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]], dtype=torch.bfloat16)
    answers = task.answer(logits)
    probabilities = torch.softmax(logits.float(), dim=1)
    assert answers == [
        {"topk": [{"index": 1, "label": "one", "probability": float(probabilities[0, 1])},
                  {"index": 2, "label": "two", "probability": float(probabilities[0, 2])}]},
        {"topk": [{"index": 0, "label": "0", "probability": float(probabilities[1, 0])},
                  {"index": 1, "label": "one", "probability": float(probabilities[1, 1])}]},
    ]
    wide = ImageClassification(HandlerSettings(topk=5, response="detailed"),
                               tmp_path).answer(logits[:1])
    assert [entry["index"] for entry in wide[0]["topk"]] == [1, 2, 0]  # k = the classes


# -- text requests -------------------------------------------------------------------

@pytest.mark.parametrize(("body", "content_type"), [
    (b"hello world", "text/plain"), (bytearray(b"hello world"), None),
    (b"hello world", "application/octet-stream"),
    (b'{"text": "hello world"}', "application/json"), (b'  {"data": "hello world"}', None),
    (b'"hello world"', None), ({"text": "hello world", "data": "no"}, None),
    ({"data": "hello world"}, None), ("hello world", None),
])
def test_request_text_from_every_accepted_body(body: object, content_type: str | None) -> None:
    assert request_text(body, content_type) == "hello world"


def test_request_text_parses_only_json_objects_and_strings() -> None:
    assert request_text(b"[not json]", None) == "[not json]"
    assert request_text(b"[1]", "application/json") == "[1]"


@pytest.mark.parametrize(("body", "content_type", "message", "status"), [
    (b"hi", "image/png", "unsupported content type 'image/png': send text or JSON", 415),
    (b'{"text": ', None, "body looks like JSON but does not parse: ", 400),
    (b'"unterminated', None, "body looks like JSON but does not parse: ", 400),
    ({"other": "x"}, None, 'expected text, or JSON with a "text" string', 400),
    (5, None, 'expected text, or JSON with a "text" string', 400),
    (" \n", None, "empty text", 400),
    (b"\xff", None, "body is not UTF-8 text: ", 400),
])
def test_request_text_refuses_with_the_reason(body: object, content_type: str | None,
                                              message: str, status: int) -> None:
    with pytest.raises(BadInput) as caught:
        request_text(body, content_type)
    assert str(caught.value).startswith(message) and caught.value.status == status


def test_load_tokenizer_without_the_package_names_the_extra(
        monkeypatch: pytest.MonkeyPatch, text_dir: Path) -> None:
    real_import = builtins.__import__

    def no_tokenizers(name: str, *args: object, **kwargs: object):
        if name == "tokenizers":
            raise ImportError("No module named 'tokenizers'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tokenizers)
    with pytest.raises(ImportError) as caught:
        load_tokenizer(text_dir / "tokenizer.json")
    assert str(caught.value) == ("text archives need the tokenizers package: "
                                 "pip install 'torchserve-cpu[text]'")


def test_text_task_pads_with_the_tokenizers_pad_id_and_no_truncation(text_dir: Path) -> None:
    task = text_task(text_dir)
    assert task.pad_id == 0 and task.tokenizer.token_to_id("[PAD]") == 0
    assert task.tokenizer.padding is None and task.tokenizer.truncation is None
    assert len(task.decode(("word " * 200).encode(), None)) == task.settings.max_length


def test_text_task_pad_id_comes_from_the_tokenizer(tmp_path: Path) -> None:
    data = json.loads((minilm_dir() / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    vocab["[PAD]"], vocab["[unused0]"] = vocab["[unused0]"], vocab["[PAD]"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    assert text_task(tmp_path).pad_id == 1
    ids, _, _ = text_task(tmp_path, max_length=4).collate([[101, 102]])
    assert ids.tolist() == [[101, 102, 1, 1]]


def test_truncation_keeps_the_closing_sep_and_the_limit_is_inclusive(text_dir: Path) -> None:
    task = text_task(text_dir, max_length=5, truncation="reject")
    assert task.decode(b"one two three", None) == [101, 2028, 2048, 2093, 102]  # 5 tokens
    with pytest.raises(BadInput, match=r"^text is 6 tokens, over the limit of 5$"):
        task.decode(b"one two three four", None)
    cut = text_task(text_dir, max_length=5).decode(b"one two three four", None)
    assert cut == [101, 2028, 2048, 2093, 102]


def test_text_collate_exact(text_dir: Path) -> None:
    ids, mask, types = text_task(text_dir, max_length=5).collate([[101, 7, 102], [101, 102]])
    assert ids.tolist() == [[101, 7, 102, 0, 0], [101, 102, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]
    assert types.tolist() == [[0] * 5, [0] * 5]
    assert ids.dtype == mask.dtype == types.dtype == torch.long


def test_text_example_inputs_have_different_lengths_inside_the_vocabulary(
        text_dir: Path) -> None:
    task = text_task(text_dir, max_length=16)
    ids, mask, types = task.example_inputs(4)
    assert ids.shape == (4, 16)
    assert mask.sum(1).tolist() == [16, 9, 2, 2]  # max(2, 16 - 7 * row)
    used = ids[mask.bool()]
    assert used.min() >= 1000 and used.max() < task.tokenizer.get_vocab_size()
    assert (ids[~mask.bool()] == 0).all() and not types.any()
    # seeded: the same inputs in every worker and every build (traces, checks, packages)
    generator = torch.Generator().manual_seed(0)
    first = torch.randint(1000, task.tokenizer.get_vocab_size(), (16,), generator=generator)
    assert torch.equal(ids[0], first)


def test_text_answers(text_dir: Path) -> None:
    output = torch.tensor([[0.5, -0.5]], dtype=torch.bfloat16)
    assert text_task(text_dir).answer(output) == [{"embedding": [0.5, -0.5]}]
    (text_dir / "index_to_name.json").write_text('{"1": "positive"}')
    logits = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    answers = text_task(text_dir, task="text_classification", response="detailed").answer(logits)
    assert [a["label"] for a in answers] == ["positive", "0"]
    assert answers[0]["logits"] == [0.0, 1.0]
    assert answers[1]["probabilities"] == torch.softmax(logits[1], 0).tolist()
