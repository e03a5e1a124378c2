"""What differs between models: decoding requests, batching, example inputs, answers.

A task turns one request body into a model-ready sample (raising BadInput for what it
cannot use), stacks samples into model inputs, makes example inputs for tracing and
checks, and turns the model's output rows into JSON answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from torchserve_cpu.handlers.settings import HandlerSettings

Inputs = tuple[torch.Tensor, ...]


class Task(Protocol):
    classifies: bool  # outputs are class scores (top-k agreement applies)

    def decode(self, body: object, content_type: str | None) -> object: ...

    def collate(self, samples: list) -> Inputs: ...

    def example_inputs(self, batch_size: int) -> Inputs: ...

    def answer(self, output: torch.Tensor) -> list[object]: ...


def make_task(settings: HandlerSettings, model_dir: Path) -> Task:
    if settings.task == "image_classification":
        from torchserve_cpu.handlers.tasks.image import ImageClassification

        return ImageClassification(settings, model_dir)
    from torchserve_cpu.handlers.tasks.text import TextTask

    return TextTask(settings, model_dir)
