"""Errors a client caused: each becomes that request's HTTP 4xx, the worker keeps serving."""

from __future__ import annotations


class BadInput(ValueError):
    """A request the handler cannot use; `status` is the HTTP code sent back with the message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status

    @property
    def message(self) -> str:
        return str(self)
