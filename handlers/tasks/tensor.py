"""Any `forward(tensor)` model (tabular, time series, ...): numbers in, numbers out.

One request is one item of `handler.input_shape` (the shape without the batch dimension;
a leading batch dimension of 1 is accepted) and `handler.input_dtype`, sent as JSON
numbers (`[0.1, 2.0, ...]` or `{"data": [...]}`) or as an Open Inference Protocol (KServe
v2) request. The answer is the model's output row as JSON numbers, or, for a protocol
request, a protocol response (handlers.open_inference). TorchServe batches requests as for
images. The example input the optimizer traces and checks with is made from the config,
never guessed: without `input_shape` the task refuses to load, naming the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from torchserve_cpu.handlers.errors import BadInput
from torchserve_cpu.handlers.open_inference import (
    DATATYPES,
    TORCH_DATATYPES,
    OpenInferenceResponse,
    flat_numbers,
    is_input,
    is_request,
    output_entry,
    parse_input,
)
from torchserve_cpu.handlers.settings import HandlerSettings

TENSOR_TYPES = ("application/json", "application/octet-stream", "text/plain")


@dataclass(frozen=True)
class TensorSample:
    """One item, and how its request asked: `protocol` (answer in the protocol's form, with
    the request's `id`), `batched` (the client sent a batch dimension of 1: so is the answer)."""

    tensor: torch.Tensor
    protocol: bool = False
    request_id: str | None = None
    batched: bool = False


class TensorTask:
    classifies = False  # outputs are any numbers: no top-k agreement in the gate
    tensor_inputs = True  # a KServe v2 envelope's non-BYTES inputs are this task's to read

    def __init__(self, settings: HandlerSettings, model_dir: Path) -> None:
        if settings.input_shape is None:
            raise ValueError(
                "handler.input_shape: task tensor needs the shape of one input without the "
                "batch dimension, e.g. input_shape: [8] for 8 features (and handler."
                "input_dtype when it is not float32): the optimizer traces and checks the "
                "model with an input of that shape")
        self.settings = settings
        self.shape = tuple(settings.input_shape)
        self.dtype = getattr(torch, settings.input_dtype)
        self.datatype = TORCH_DATATYPES[self.dtype]

    def decode(self, body: object, content_type: str | None) -> TensorSample:
        if content_type and not content_type.startswith(TENSOR_TYPES):
            raise BadInput(f"unsupported content type {content_type!r}: send JSON numbers or "
                           "a KServe v2 request", 415)
        if isinstance(body, (bytes, bytearray)):
            try:
                body = json.loads(body)
            except (ValueError, UnicodeDecodeError) as error:
                raise BadInput(f"body is not JSON: {error}") from None
        if is_request(body):
            return self._protocol_request(body)  # type: ignore[arg-type]
        if is_input(body):  # from TorchServe's kservev2 envelope, which answers in its form
            return self._checked(parse_input(body, "input"), "input", body.get("datatype"))
        if isinstance(body, dict) and "data" in body:
            body = body["data"]
        if not isinstance(body, list):
            raise BadInput(f"expected JSON numbers of shape {list(self.shape)}, a "
                           '{"data": [...]} or a KServe v2 {"inputs": [...]} request')
        values = flat_numbers(body, self.datatype, "data")
        return self._checked(self._nested(body, values), "data", None)

    def _protocol_request(self, body: dict) -> TensorSample:
        inputs = body["inputs"]
        if not isinstance(inputs, list) or len(inputs) != 1:
            count = len(inputs) if isinstance(inputs, list) else inputs
            raise BadInput(f"inputs: the model takes one input tensor, got {count}")
        item = inputs[0]
        where = f'inputs[0] "{item.get("name")}"' if isinstance(item, dict) else "inputs[0]"
        if not isinstance(item, dict):
            raise BadInput(f"{where}: expected {{name, shape, datatype, data}}")
        sample = self._checked(parse_input(item, where), where, item.get("datatype"))
        request_id = body.get("id")
        return TensorSample(sample.tensor, True,
                            request_id if isinstance(request_id, str) else None, sample.batched)

    def _nested(self, data: list, values: list) -> torch.Tensor:
        """JSON numbers as a tensor of their nesting's shape; BadInput when ragged."""
        shape = []
        level: object = data
        while isinstance(level, list):
            shape.append(len(level))
            level = level[0] if level else None
        if len(values) != torch.Size(shape).numel():
            raise BadInput(f"data: nested lists of unequal lengths (expected shape "
                           f"{list(self.shape)})")
        return torch.tensor(values, dtype=self.dtype).reshape(shape)

    def _checked(self, tensor: torch.Tensor, where: str, datatype: object) -> TensorSample:
        """The item in the model's dtype, its shape checked against `handler.input_shape`."""
        if datatype is not None and DATATYPES.get(str(datatype)) != self.dtype:
            raise BadInput(f"{where}: datatype {datatype}: this model takes {self.datatype} "
                           f"(handler.input_dtype: {self.settings.input_dtype})")
        shape = tuple(tensor.shape)
        batched = shape == (1, *self.shape)
        if shape != self.shape and not batched:
            raise BadInput(f"{where}: shape {list(shape)}: the model takes one item of shape "
                           f"{list(self.shape)} per request (or [1, {str(list(self.shape))[1:]});"
                           " send items as separate requests, TorchServe batches them")
        return TensorSample(tensor.reshape(self.shape).to(self.dtype), batched=batched)

    def collate(self, samples: list[TensorSample]) -> tuple[torch.Tensor]:
        return (torch.stack([sample.tensor for sample in samples]),)

    def example_inputs(self, batch_size: int) -> tuple[torch.Tensor]:
        generator = torch.Generator().manual_seed(0)
        shape = (batch_size, *self.shape)
        if self.dtype.is_floating_point:
            return (torch.randn(shape, generator=generator).to(self.dtype),)
        # integer inputs (ids, categories): small values every embedding table holds
        return (torch.randint(0, 2, shape, generator=generator).to(self.dtype),)

    def answer(self, output: torch.Tensor, samples: list | None = None) -> list[object]:
        answers: list[object] = []
        for row, sample in zip(output, samples or [TensorSample(output)] * len(output)):
            if sample.batched:
                row = row.unsqueeze(0)
            if sample.protocol:
                response = OpenInferenceResponse(outputs=[output_entry("output-0", row)])
                if sample.request_id:
                    response["id"] = sample.request_id
                answers.append(response)
            else:
                answers.append(row.float().tolist() if row.dtype in (
                    torch.float16, torch.bfloat16) else row.tolist())
        return answers

    def output_problems(self, output: torch.Tensor) -> list[str]:
        return []
