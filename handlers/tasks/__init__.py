"""What differs between models: decoding requests, batching, example inputs, answers.

A task turns one request body into a model-ready sample (raising BadInput for what it
cannot use), stacks samples into model inputs, makes example inputs for tracing and
checks, and turns the model's output rows into JSON answers. Adding a task type is adding
one entry to `TASKS`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from torchserve_cpu.handlers.settings import HandlerSettings

#: The positional tensors of one model call (a batch).
ModelInputs = tuple[torch.Tensor, ...]


class Task(Protocol):
    classifies: bool  # outputs are class scores (top-k agreement applies)

    def decode(self, body: object, content_type: str | None) -> object: ...

    def collate(self, samples: list) -> ModelInputs: ...

    def example_inputs(self, batch_size: int) -> ModelInputs: ...

    def answer(self, output: torch.Tensor) -> list[object]: ...


def _image_classification(settings: HandlerSettings, model_dir: Path) -> Task:
    from torchserve_cpu.handlers.tasks.image import ImageClassification  # PIL: only here

    return ImageClassification(settings, model_dir)


def _text(settings: HandlerSettings, model_dir: Path) -> Task:
    from torchserve_cpu.handlers.tasks.text import TextTask  # tokenizers: only here

    return TextTask(settings, model_dir)


#: `handler.task` -> the task's constructor
TASKS: dict[str, Callable[[HandlerSettings, Path], Task]] = {
    "image_classification": _image_classification,
    "text_classification": _text,
    "text_embedding": _text,
}


def make_task(settings: HandlerSettings, model_dir: Path) -> Task:
    """The task `handler.task` names; ValueError naming the choices for any other."""
    factory = TASKS.get(settings.task)
    if factory is None:
        raise ValueError(f"handler.task: {settings.task!r} is not one of {', '.join(TASKS)}")
    return factory(settings, model_dir)
