"""Helpers for tests that talk to a real TorchServe on loopback."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def post(url: str, body: bytes, content_type: str | None = None, timeout: float = 120) -> Reply:
    """POST and return status + body, 4xx/5xx included (no exception)."""
    request = urllib.request.Request(url, data=body, method="POST")
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(response.status, response.read())
    except urllib.error.HTTPError as error:
        return Reply(error.code, error.read())
