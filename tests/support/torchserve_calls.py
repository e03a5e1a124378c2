"""A batch as TorchServe hands it to a handler: rows and a real `ts.context.Context`,
built by TorchServe's own `Service.retrieve_data_for_inference` from frontend requests."""

from __future__ import annotations

from collections.abc import Mapping

from ts.context import Context
from ts.service import Service

MANIFEST = {"model": {"modelName": "m", "modelVersion": "1"}}


def frontend_request(index: int, body: object, content_type: str = "application/json",
                     name: str = "body") -> dict:
    """One request as the frontend sends it to a worker (after otf_message_handler decodes
    a JSON body, as it does for application/json)."""
    return {
        "requestId": f"request-{index}".encode(),
        "parameters": [{"name": name, "contentType": content_type, "value": body}],
        "headers": [{"name": b"Content-Type", "value": content_type.encode()}],
    }


def torchserve_call(bodies: list[object], content_type: str = "application/json",
                    name: str = "body", context: Context | None = None) -> tuple[list, Context]:
    """The rows and context TorchServe hands the entry point for a batch of these bodies
    (`context`: a worker's context to reuse, as TorchServe reuses it for every batch)."""
    batch = [frontend_request(index, body, content_type, name)
             for index, body in enumerate(bodies)]
    headers, rows, request_ids = Service.retrieve_data_for_inference(batch)
    context = context or worker_context("m", "/tmp", MANIFEST)
    context.request_processor = headers
    context.request_ids = request_ids
    if context.metrics is not None:  # as Service.predict does before calling the handler
        context.metrics.request_ids = request_ids
    return rows, context


def worker_context(model_name: str, model_dir: str, manifest: Mapping[str, object],
                   model_yaml_config: Mapping[str, object] | None = None,
                   metrics: object = None) -> Context:
    """The context a worker's handler is initialized with (ts/model_loader.py)."""
    return Context(model_name, model_dir, dict(manifest), 1, None, "0.12.0",
                   metrics=metrics, model_yaml_config=dict(model_yaml_config or {}))
