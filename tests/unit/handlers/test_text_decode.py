from pathlib import Path

import pytest

from torchserve_cpu.handlers.errors import BadInput
from torchserve_cpu.handlers.settings import HandlerSettings
from torchserve_cpu.handlers.tasks.text import TextTask
from torchserve_cpu.model_store.build import minilm_dir


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "tokenizer.json").write_bytes((minilm_dir() / "tokenizer.json").read_bytes())
    return tmp_path


def make(model_dir: Path, **settings: object) -> TextTask:
    return TextTask(HandlerSettings(task="text_embedding", **settings), model_dir)  # type: ignore[arg-type]


def test_plain_and_json_text(model_dir: Path) -> None:
    task = make(model_dir)
    ids = task.decode(b"hello world", "text/plain")
    assert ids[0] == 101 and ids[-1] == 102 and len(ids) == 4
    assert task.decode(b'{"text": "hello world"}', "application/json") == ids
    assert task.decode({"text": "hello world"}, None) == ids


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (b"", None, 400, "empty text"),
        (b"   ", None, 400, "empty text"),
        (b"\xff\xfe\xfa", None, 400, "not UTF-8"),
        (b'{"text": ', "application/json", 400, "does not parse"),
        (b'{"text": 5}', "application/json", 400, '"text"'),
        (b"hello", "image/png", 415, "content type"),
    ],
)
def test_bad_text(model_dir: Path, body: bytes, content_type: str | None, status: int,
                  message: str) -> None:
    with pytest.raises(BadInput, match=message) as caught:
        make(model_dir).decode(body, content_type)
    assert caught.value.status == status


def test_long_text_truncated_or_rejected(model_dir: Path) -> None:
    long_text = ("word " * 500).encode()
    ids = make(model_dir, max_length=32).decode(long_text, None)
    assert len(ids) == 32 and ids[-1] == 102
    with pytest.raises(BadInput, match="over the limit of 32") as caught:
        make(model_dir, max_length=32, truncation="reject").decode(long_text, None)
    assert caught.value.status == 413


def test_collate_pads_to_max_length(model_dir: Path) -> None:
    task = make(model_dir, max_length=16)
    ids, mask, types = task.collate([[101, 7, 102], [101, 102]])
    assert ids.shape == mask.shape == types.shape == (2, 16)
    assert mask.sum(1).tolist() == [3, 2]
