"""What a request's payload and content type are, for raw bodies and multipart form
uploads, from rows and headers made by TorchServe's own ts/service.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.torchserve_calls import form_request, frontend_request, torchserve_batch
from torchserve_cpu.handlers.envelopes import request_headers, request_payload
from torchserve_cpu.handlers.errors import BadInput
from torchserve_cpu.handlers.settings import HandlerSettings
from torchserve_cpu.handlers.tasks.text import TextTask
from torchserve_cpu.model_store.build import minilm_dir


def payload(request: dict) -> tuple[object, str | None]:
    [row], context = torchserve_batch([request])
    return request_payload(row, request_headers(context)[0])


def test_raw_body_has_the_request_content_type() -> None:
    assert payload(frontend_request(0, bytearray(b"\x89PNG"), "image/png")) == \
        (bytearray(b"\x89PNG"), "image/png")


def test_form_file_part_has_its_own_content_type() -> None:
    request = form_request(0, [("data", "image/jpeg", bytearray(b"\xff\xd8")),
                               ("note", "", bytearray(b"hi"))])
    assert payload(request) == (bytearray(b"\xff\xd8"), "image/jpeg")


def test_form_field_without_a_file_has_no_content_type() -> None:
    assert payload(form_request(0, [("data", "", bytearray(b"hello"))])) == \
        (bytearray(b"hello"), None)


@pytest.mark.parametrize(("fields", "message"), [
    ([("file", "image/png", bytearray(b"x")), ("note", "", bytearray(b"y"))],
     "no form field named data (got file, note)"),
    ([], "empty request body"),
])
def test_missing_payload_names_what_came(fields: list, message: str) -> None:
    with pytest.raises(BadInput, match=re.escape(message)) as caught:
        payload(form_request(0, fields))
    assert caught.value.status == 400


def test_text_part_decodes_like_a_text_body(tmp_path: Path) -> None:
    """A text/* part arrives as str (otf_message_handler decodes it), a body as bytes."""
    (tmp_path / "tokenizer.json").write_bytes((minilm_dir() / "tokenizer.json").read_bytes())
    task = TextTask(HandlerSettings(task="text_embedding"), tmp_path)
    form = payload(form_request(0, [("data", "text/plain", "a cat on a mat")]))
    body = payload(frontend_request(0, bytearray(b"a cat on a mat"), "text/plain"))
    assert form == ("a cat on a mat", "text/plain")
    assert task.decode(*form) == task.decode(*body)
