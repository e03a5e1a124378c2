"""Items -> requests, on TorchServe's own structures: batches decoded by ts/service.py and
items made by its real request envelopes (kserve, kservev2, json, body)."""

from __future__ import annotations

import pytest
from ts.context import Context
from ts.torch_handler.request_envelope.body import BodyEnvelope
from ts.torch_handler.request_envelope.json import JSONEnvelope
from ts.torch_handler.request_envelope.kserve import KServeEnvelope
from ts.torch_handler.request_envelope.kservev2 import KServev2Envelope
from ts.utils.util import PredictionException

from tests.support.torchserve_calls import torchserve_call
from torchserve_cpu.handlers.envelopes import (
    ItemOrigin,
    came_through_envelope,
    check_answerable,
    instance_body,
    instance_label,
    item_origins,
    request_errors,
    request_headers,
)
from torchserve_cpu.handlers.errors import BadInput

IMAGE_B64 = "aW1hZ2U="  # the envelopes never decode it


def items_from(envelope_class: type, bodies: list[object]) -> tuple[list, Context, object]:
    """What the handler receives behind a real envelope, the context, and the response."""
    rows, context = torchserve_call(bodies)
    seen: list = []

    def handle(items: list, ctx: Context) -> list:
        seen.append(items)
        return [{"answer": position} for position, _ in enumerate(items or [])] or ["none"]

    response = envelope_class(handle).handle(rows, context)
    return seen[0], context, response


def v1(*instances: object) -> dict:
    return {"instances": list(instances)}


def v2(*data: str, **extra: object) -> dict:
    inputs = [{"name": f"input-{index}", "shape": [1], "datatype": "BYTES", "data": [value]}
              for index, value in enumerate(data)]
    return {"inputs": inputs, **extra}


# ---- which items are TorchServe's own rows --------------------------------------------

@pytest.mark.parametrize("bodies", [[b"\xff\xd8jpeg"], [b"a", b"b", b"c", b"d"],
                                    [{"data": IMAGE_B64}], [v1({"data": IMAGE_B64})]])
def test_torchserve_rows_are_not_enveloped(bodies: list[object]) -> None:
    rows, context = torchserve_call(bodies)
    assert not came_through_envelope(rows, request_headers(context))
    assert item_origins(len(rows), len(bodies)) == [ItemOrigin(i, 0) for i in range(len(rows))]


def test_form_fields_are_rows_too() -> None:
    rows, context = torchserve_call([b"\xff\xd8jpeg", b"x"], content_type="image/jpeg",
                                    name="data")
    assert not came_through_envelope(rows, request_headers(context))


@pytest.mark.parametrize(("envelope", "body"), [
    (KServeEnvelope, v1({"data": IMAGE_B64}, {"data": IMAGE_B64}, {"data": IMAGE_B64})),
    (KServeEnvelope, v1(IMAGE_B64)),
    (KServev2Envelope, v2(IMAGE_B64, IMAGE_B64)),
    (JSONEnvelope, v1({"b64": IMAGE_B64})),
    (BodyEnvelope, {"data": IMAGE_B64}),
])
def test_envelope_items_all_belong_to_the_one_request(envelope: type, body: dict) -> None:
    items, context, _ = items_from(envelope, [body])
    assert came_through_envelope(items, request_headers(context))
    assert item_origins(len(items), 1) == [ItemOrigin(0, i) for i in range(len(items))]


def test_an_instance_shaped_like_a_row_is_read_as_one() -> None:
    """Harmless: with one request its only item is request 0's either way."""
    items, context, _ = items_from(KServeEnvelope, [v1({"body": IMAGE_B64})])
    assert not came_through_envelope(items, request_headers(context))
    assert item_origins(len(items), 1) == [ItemOrigin(0, 0)]


def test_kserve_envelopes_read_only_the_first_request() -> None:
    """What the brief claims, checked on TorchServe's code: the items are request 0's."""
    items, context, response = items_from(KServeEnvelope, [v1("a", "b"), v1("c")])
    assert items == ["a", "b"] and len(response) == 1  # TorchServe wants 2: 503 for both
    assert item_origins(len(items), 2) == [ItemOrigin(0, 0), ItemOrigin(1, 0)]  # moot
    items, _, response = items_from(KServev2Envelope, [v2("a", "b", "c"), v2("d")])
    assert [item["data"] for item in items] == ["a", "b", "c"] and len(response) == 1
    assert item_origins(len(items), 2) is None


def test_json_envelope_reads_every_request() -> None:
    items, _, response = items_from(JSONEnvelope, [v1("a", "b"), v1("c")])
    assert items == ["a", "b", "c"] and len(response) == 2  # split back by lengths it keeps
    assert item_origins(len(items), 2) is None  # the split is the envelope's secret


def test_no_request_information_means_no_origins() -> None:
    assert request_headers(object()) == []
    assert item_origins(3, 0) is None


# ---- what an envelope item holds ------------------------------------------------------

def test_v1_instances_pass_through() -> None:
    assert instance_body({"data": IMAGE_B64}) == {"data": IMAGE_B64}
    assert instance_body("some text") == "some text"
    with pytest.raises(BadInput, match="empty instance"):
        instance_body(None)


def test_v2_bytes_input_is_its_first_element() -> None:
    items, _, _ = items_from(KServev2Envelope, [v2(IMAGE_B64)])
    assert instance_body(items[0]) == IMAGE_B64


def test_v2_input_with_more_elements_is_refused_not_cut() -> None:
    body = {"inputs": [{"name": "input-0", "shape": [2], "datatype": "BYTES",
                        "data": ["first", "second"]}]}
    items, _, _ = items_from(KServev2Envelope, [body])
    assert items[0]["data"] == "first"  # the envelope dropped "second"
    with pytest.raises(BadInput, match=r"shape \[2\].*first element"):
        instance_body(items[0])


def test_v2_numeric_input_is_refused() -> None:
    body = {"inputs": [{"name": "input-0", "shape": [1, 2], "datatype": "FP32",
                        "data": [0.5, 0.25]}]}
    items, _, _ = items_from(KServev2Envelope, [body])
    with pytest.raises(BadInput, match="datatype FP32: send BYTES"):
        instance_body(items[0])


def test_labels_follow_the_protocol() -> None:
    items, _, _ = items_from(KServev2Envelope, [v2("a", "b")])
    assert instance_label(1, items[1]) == 'inputs[1] "input-1"'
    assert instance_label(2, {"data": IMAGE_B64}) == "instances[2]"


# ---- one status per request -----------------------------------------------------------

def test_one_item_per_request_keeps_each_error() -> None:
    errors = {1: BadInput("cannot decode image"), 3: BadInput("too big", 413)}
    merged = request_errors(errors, item_origins(4, 4))
    assert merged == {1: errors[1], 3: errors[3]}


def test_bad_instances_of_one_request_make_one_error() -> None:
    errors = {1: BadInput("instances[1]: a"), 2: BadInput("instances[2]: b")}
    merged = request_errors(errors, item_origins(3, 1))
    assert list(merged) == [0]
    assert merged[0].status == 400
    assert merged[0].message == "2 of 3 rejected: instances[1]: a; instances[2]: b"


def test_status_is_the_bad_instances_own_when_they_agree() -> None:
    same = {0: BadInput("x", 413), 2: BadInput("y", 413)}
    assert request_errors(same, item_origins(3, 1))[0].status == 413
    mixed = {0: BadInput("x", 413), 2: BadInput("y", 415)}
    assert request_errors(mixed, item_origins(3, 1))[0].status == 400


def test_many_bad_instances_are_counted_not_all_named() -> None:
    errors = {index: BadInput(f"instances[{index}]: bad") for index in range(6)}
    message = request_errors(errors, item_origins(6, 1))[0].message
    assert message.startswith("6 of 6 rejected: instances[0]: bad;")
    assert "instances[3]" not in message and message.endswith("and 3 more")


def test_merged_batches_blame_no_request() -> None:
    assert request_errors({0: BadInput("x")}, None) == {}


# ---- what cannot be answered ----------------------------------------------------------

def test_kservev2_batch_is_refused_with_the_cause() -> None:
    rows, context = torchserve_call([v2("a", id="mine"), v2("b")])

    def handle(items: list, ctx: Context) -> list:
        check_answerable(ctx, items, len(request_headers(ctx)))
        return ["never"]

    with pytest.raises(PredictionException, match="batchSize: 1") as refused:
        KServev2Envelope(handle).handle(rows, context)
    assert refused.value.error_code == 503
    assert not hasattr(context, "input_request_id")  # no stale id for the next request


def test_kserve_v1_batch_is_left_to_torchserve() -> None:
    items, context, _ = items_from(KServeEnvelope, [v1("a"), v1("b")])
    check_answerable(context, items, 2)  # cannot tell it from json: no refusal


@pytest.mark.parametrize(("envelope", "body"), [
    (KServeEnvelope, {"instances": []}),
    (KServeEnvelope, {"predict": [1]}),
    (KServeEnvelope, {"instances": {"data": IMAGE_B64}}),
    (KServev2Envelope, {"inputs": [], "id": "empty-one"}),
])
def test_no_instances_is_a_400(envelope: type, body: dict) -> None:
    rows, context = torchserve_call([body])
    wrapped = envelope(lambda items, ctx: check_answerable(ctx, items, 1))
    with pytest.raises(PredictionException, match="no list of instances") as refused:
        wrapped.handle(rows, context)
    assert refused.value.error_code == 400
    if envelope is KServev2Envelope:  # the next request without an id gets its own
        rows, context_next = torchserve_call([v2("a")])
        context.request_processor, context.request_ids = (context_next.request_processor,
                                                          context_next.request_ids)
        response = KServev2Envelope(lambda items, ctx: ["answer"]).handle(rows, context)
        assert response[0]["id"] == "request-0"

