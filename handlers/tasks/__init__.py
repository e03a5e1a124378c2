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
    tensor_inputs: bool  # reads a KServe v2 envelope's tensor inputs (else only BYTES)

    def decode(self, body: object, content_type: str | None) -> object: ...

    def collate(self, samples: list) -> ModelInputs: ...

    def example_inputs(self, batch_size: int) -> ModelInputs: ...

    def answer(self, output: torch.Tensor, samples: list | None = None) -> list[object]:
        """One JSON answer per output row; `samples` are the decoded items, in order."""
        ...

    def output_problems(self, output: torch.Tensor) -> list[str]:
        """What the model's output on the example says is wrong with the archive (a labels
        file that does not fit): warnings at load, errors in `torchserve-cpu check`."""
        ...


def _image_classification(settings: HandlerSettings, model_dir: Path) -> Task:
    from torchserve_cpu.handlers.tasks.image import ImageClassification  # PIL: only here

    return ImageClassification(settings, model_dir)


def _text(settings: HandlerSettings, model_dir: Path) -> Task:
    from torchserve_cpu.handlers.tasks.text import TextTask  # tokenizers: only here

    return TextTask(settings, model_dir)


def _tensor(settings: HandlerSettings, model_dir: Path) -> Task:
    from torchserve_cpu.handlers.tasks.tensor import TensorTask

    return TensorTask(settings, model_dir)


#: `handler.task` -> the task's constructor
TASKS: dict[str, Callable[[HandlerSettings, Path], Task]] = {
    "image_classification": _image_classification,
    "text_classification": _text,
    "text_embedding": _text,
    "tensor": _tensor,
}


def describe_example(settings: HandlerSettings, example: ModelInputs) -> str:
    """What the example input is, for a model that does not run on it, with the fix."""
    shapes = " + ".join("x".join(map(str, x.shape)) for x in example)
    if settings.task == "image_classification":
        return (f"handler.task image_classification traces the model with a made-up "
                f"{shapes} image batch (handler.image_size {settings.image_size}); for a model "
                "that takes other tensors set handler.task: tensor and handler.input_shape "
                "(one input without the batch dimension, e.g. [8])")
    if settings.task == "tensor":
        return (f"handler.input_shape {list(settings.input_shape or ())} and input_dtype "
                f"{settings.input_dtype} make a {shapes} example batch: set them to what "
                "the model's forward takes")
    return (f"handler.task {settings.task} makes token ids, attention mask and token type "
            f"ids of {shapes}: a text model's forward(input_ids, attention_mask, "
            "token_type_ids)")


def make_task(settings: HandlerSettings, model_dir: Path) -> Task:
    """The task `handler.task` names; ValueError naming the choices for any other."""
    factory = TASKS.get(settings.task)
    if factory is None:
        raise ValueError(f"handler.task: {settings.task!r} is not one of {', '.join(TASKS)}")
    return factory(settings, model_dir)
