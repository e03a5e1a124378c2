"""TorchServe's request rows and headers, and which request each item handed to `handle`
came from, with or without a service envelope: the one place that reads them.

Without an envelope TorchServe hands `handle` one row per request (ts/service.py,
retrieve_data_for_inference): row i maps request i's parameter names ("body", form fields,
query parameters) to their values, and request i's headers hold the same names. A service
envelope (`service_envelope=` in config.properties) replaces the rows by the items it parsed
and turns the handler's answers into one response per request it read: `kserve` and
`kservev2` read request 0 only (request_envelope/kserve.py parse_input takes
`self._data_list[0]`, kservev2.py _from_json `body_list[0]`) and answer with a list of one;
`json` concatenates the instances of every request; `body` passes one body per request.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from ts.utils.util import PredictionException

from torchserve_cpu.handlers.errors import BadInput

log = logging.getLogger(__name__)

NAMED_ERRORS = 3  # bad instances named in one request's status line; the body has them all
KSERVE_V2_MARKER = "input_names"  # kservev2.py sets it on the context before calling handle
# What kservev2.py leaves on the context for its format_output, which an exception skips:
# a stale id would be sent back with the next request that has none (seen on TorchServe 0.12).
KSERVE_V2_STATE = ("input_request_id", "input_names")


class ItemOrigin(NamedTuple):
    """The request an item came from and its place among that request's items."""

    request: int
    position: int


def request_headers(context: object) -> list[Mapping[str, object]]:
    """Each request's headers (parameter names included); empty when the context has none."""
    processors = getattr(context, "request_processor", None) or []
    return [processor.get_request_properties() for processor in processors]


def header(headers: Sequence[Mapping[str, object]], request: int, name: str) -> str | None:
    """A header of request `request`, whatever its case (TorchServe keeps what the client sent)."""
    if not 0 <= request < len(headers):
        return None
    for key, value in headers[request].items():
        if key.lower() == name:
            return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)
    return None


PAYLOAD_NAMES = ("data", "body")  # a form's field named as in TorchServe's docs; a raw body


def request_payload(row: Mapping[str, object],
                    properties: Mapping[str, object]) -> tuple[object, str | None]:
    """A request's payload and the content type that describes it, as TorchServe passes them.

    A raw body is the parameter "body". A multipart/form-data upload (a browser form,
    `curl -F data=@cat.jpg`) arrives already taken apart: one parameter per form field,
    under the field's name, holding the file's bytes (a bytearray; a text/* part as str, an
    application/json part parsed when it parses). Each parameter's own content type is in
    the request's properties under its name, `{"data": {"content-type": "image/png"}}`: the
    request's for a raw body, the part's for a form field (empty for a field without a
    file), while the request's own Content-Type is multipart/form-data (seen on TorchServe
    0.12; ts/service.py retrieve_data_for_inference).
    """
    name = next((name for name in PAYLOAD_NAMES if row.get(name) is not None), None)
    if name is None:
        fields = [name for name in row if name not in PAYLOAD_NAMES]
        if not fields:
            raise BadInput("empty request body")
        raise BadInput(f"no form field named data (got {', '.join(fields)}): send the file as "
                       "field data (curl -F data=@cat.jpg), or as the request body")
    own = properties.get(name)
    content_type = own.get("content-type") if isinstance(own, Mapping) else None
    return row[name], str(content_type) if content_type else None


def item_payload(item: object, index: int, origin: ItemOrigin | None,
                 headers: Sequence[Mapping[str, object]], enveloped: bool,
                 tensor_inputs: bool = False) -> tuple[object, str | None]:
    """What to decode from item `index` of a batch and the content type describing it.

    Without an envelope row i is request i; an envelope's instances come from its JSON,
    so their type is the type of the request they came from."""
    if enveloped:
        content_type = header(headers, origin.request, "content-type") if origin else None
        return instance_body(item, tensor_inputs), content_type
    return request_payload(item, headers[index])  # type: ignore[arg-type]


def is_request_row(row: object, headers: Mapping[str, object]) -> bool:
    """Whether `row` is a request as TorchServe builds it: a dict of its parameters."""
    return isinstance(row, dict) and bool(row) and all(name in headers for name in row)


def came_through_envelope(items: object, headers: Sequence[Mapping[str, object]]) -> bool:
    """Whether an envelope made the items: they are not TorchServe's rows, one per request."""
    if not isinstance(items, list) or len(items) != len(headers):
        return True
    return not all(map(is_request_row, items, headers))


def item_origins(item_count: int, request_count: int) -> list[ItemOrigin] | None:
    """Where each item came from; None when an envelope merged several requests' items.

    One request: all items are its own, whatever the envelope (TorchServe's envelopes read
    request 0). As many items as requests: item i is request i (no envelope, `body`, or
    `json` with one instance each). Otherwise the split is known only to the envelope
    (`json`), or the batch is lost anyway (`kserve` answers one request for N).
    """
    if request_count == 1:
        return [ItemOrigin(0, position) for position in range(item_count)]
    if item_count == request_count:
        return [ItemOrigin(request, 0) for request in range(item_count)]
    return None


def instance_label(position: int, item: object) -> str:
    """How the client's request names an item: `inputs[1] "input-1"` (v2) or `instances[1]`."""
    if isinstance(item, dict) and "datatype" in item:
        return f'inputs[{position}] "{item.get("name")}"'
    return f"instances[{position}]"


def instance_body(item: object, tensor_inputs: bool = False) -> object:
    """What to decode from an envelope's item; BadInput where the envelope dropped data.

    kservev2.py passes a BYTES input on with `data` cut to its first element and other
    datatypes reshaped to nested lists. The image and text tasks decode one image or text
    per BYTES input; a task with `tensor_inputs` (tensor) reads the other inputs whole.
    """
    if item is None:
        raise BadInput("empty instance")
    if not (isinstance(item, dict) and "datatype" in item):
        return item  # kserve v1 instance: a JSON value ({"data": ...}, a string, ...)
    if tensor_inputs:
        return item
    if item["datatype"] != "BYTES":
        raise BadInput(f"datatype {item['datatype']}: send BYTES (a base64 image or UTF-8 text)")
    shape = item.get("shape")
    if isinstance(shape, list) and all(isinstance(side, int) for side in shape):
        if math.prod(shape) != 1:
            raise BadInput(
                f"shape {shape}: TorchServe's kservev2 envelope passes on only the first "
                "element of a BYTES input; send one element per input (shape [1])"
            )
    return item.get("data")


def request_errors(
    errors: Mapping[int, BadInput], origins: Sequence[ItemOrigin] | None
) -> dict[int, BadInput]:
    """One error per request with a bad item, naming up to NAMED_ERRORS of its bad items.

    A request of one item gets that item's error unchanged. Its status is the bad items'
    own when they agree, else 400. Without origins no request can be blamed: {}.
    """
    if origins is None:
        return {}
    per_request: dict[int, list[BadInput]] = {}
    for index in sorted(errors):
        per_request.setdefault(origins[index].request, []).append(errors[index])
    merged = {}
    for request, bad in per_request.items():
        size = sum(1 for origin in origins if origin.request == request)
        if size == 1:
            merged[request] = bad[0]
            continue
        statuses = {error.status for error in bad}
        named = "; ".join(error.message for error in bad[:NAMED_ERRORS])
        more = f"; and {len(bad) - NAMED_ERRORS} more" if len(bad) > NAMED_ERRORS else ""
        merged[request] = BadInput(
            f"{len(bad)} of {size} rejected: {named}{more}",
            statuses.pop() if len(statuses) == 1 else 400,
        )
    return merged


def check_answerable(context: object, items: object, request_count: int) -> None:
    """Refuse, with a message saying why, what an envelope made unanswerable.

    No items, or not a list (kserve.py passes `"instances"` on as it is): neither envelope
    can format an answer for zero instances (kserve.py sends none back, kservev2.py has no
    input name for one), so the client gets a 400 saying so.
    Several requests under kservev2: the envelope reads only the first and answers with a
    list of one, so TorchServe would fail all of them with 503 "number of batch response
    mismatched"; the same 503, but naming the cause and the fix. Only kservev2 is
    recognisable (its marker on the context): `kserve` looks like `json`, which serves such
    batches, so there TorchServe's own 503 stays the answer.
    """
    if request_count > 1 and hasattr(context, KSERVE_V2_MARKER):
        message = (f"the kservev2 envelope reads only the first of the {request_count} "
                   "requests TorchServe batched together, so none can be answered; set "
                   "batchSize: 1 in the model's model-config.yaml to serve KServe requests")
        log.error("%s", message)
        raise refusal(context, message, 503)
    if not isinstance(items, list) or not items:
        raise refusal(context, 'the request has no list of instances: send {"instances": '
                      '[...]} (KServe v1) or {"inputs": [...]} (KServe v2)', 400)


def refusal(context: object, message: str, status: int) -> PredictionException:
    """An error for every request of the batch, after clearing what kservev2 left behind."""
    for name in KSERVE_V2_STATE:
        if hasattr(context, name):
            delattr(context, name)
    return PredictionException(message, status)
