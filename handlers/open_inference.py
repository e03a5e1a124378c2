"""The tensor form of the Open Inference Protocol (KServe v2, Triton): request inputs in,
response outputs out.

A request is `{"id"?, "inputs": [{"name", "shape", "datatype", "data"}]}`; `data` holds
the tensor's elements in row-major order, flat or nested
(https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/). The answer
is `{"model_name", "model_version"?, "id"?, "outputs": [{"name", "shape", "datatype",
"data"}]}` with `data` flat. Tensor datatypes only: BYTES (images, text) is what the
image and text tasks read, through handlers.envelopes. Every mistake is a BadInput naming
the input, so the client gets a 400 and the worker keeps serving.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from torchserve_cpu.handlers.errors import BadInput

#: the protocol's tensor datatypes that torch holds
DATATYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool, "UINT8": torch.uint8, "INT8": torch.int8, "INT16": torch.int16,
    "INT32": torch.int32, "INT64": torch.int64, "FP16": torch.float16,
    "BF16": torch.bfloat16, "FP32": torch.float32, "FP64": torch.float64,
}
TORCH_DATATYPES = {dtype: name for name, dtype in DATATYPES.items()}


class OpenInferenceResponse(dict):
    """A response in the protocol's form; the handler adds `model_name` and `model_version`
    (the task does not know them)."""


def is_request(body: object) -> bool:
    """Whether `body` is a protocol request (`{"inputs": [...]}`)."""
    return isinstance(body, Mapping) and "inputs" in body


def is_input(item: object) -> bool:
    """Whether `item` is one protocol input (what TorchServe's kservev2 envelope hands on)."""
    return isinstance(item, Mapping) and "datatype" in item


def flat_numbers(data: object, datatype: str, where: str) -> list:
    """The elements of `data` (nested lists or flat) in row-major order, each checked to be
    a number the datatype can hold; BadInput naming the first that is not."""
    integral = datatype.startswith(("INT", "UINT"))
    out: list = []
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(reversed(value))
        elif datatype == "BOOL" and isinstance(value, bool):
            out.append(value)
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadInput(f"{where}: {value!r} is not a number ({datatype})")
        elif integral and not float(value).is_integer():
            raise BadInput(f"{where}: {value!r} is not an integer ({datatype})")
        else:
            out.append(value)
    return out


def parse_input(item: Mapping, where: str) -> torch.Tensor:
    """One protocol input as a tensor of its datatype and shape."""
    datatype, shape = item.get("datatype"), item.get("shape")
    if datatype == "BYTES":
        raise BadInput(f"{where}: datatype BYTES: this model takes a tensor of numbers")
    if datatype not in DATATYPES:
        raise BadInput(f"{where}: datatype {datatype!r} is not one of {', '.join(DATATYPES)}")
    if not (isinstance(shape, list) and all(
            isinstance(side, int) and not isinstance(side, bool) and side >= 0
            for side in shape)):
        raise BadInput(f"{where}: shape {shape!r} is not a list of sizes")
    if "data" not in item:
        raise BadInput(f"{where}: no data")
    values = flat_numbers(item["data"], str(datatype), where)
    if len(values) != math.prod(shape):
        raise BadInput(f"{where}: shape {shape} holds {math.prod(shape)} elements, data has "
                       f"{len(values)}")
    try:
        return torch.tensor(values, dtype=DATATYPES[str(datatype)]).reshape(shape)
    except (OverflowError, RuntimeError) as error:  # e.g. 300 as UINT8
        raise BadInput(f"{where}: {error}") from None


def output_entry(name: str, tensor: torch.Tensor) -> dict[str, object]:
    """One protocol output: the tensor's shape, datatype and flat data."""
    if tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.float()  # JSON numbers: say FP32, which is what they are
    return {"name": name, "shape": list(tensor.shape),
            "datatype": TORCH_DATATYPES.get(tensor.dtype, "FP32"),
            "data": tensor.reshape(-1).tolist()}
