"""A batch as TorchServe hands it to a handler: rows and a real `ts.context.Context`,
built by TorchServe's own `Service.retrieve_data_for_inference` from frontend requests."""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from pathlib import Path

import ts
from PIL import Image
from ts.context import Context
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.service import Service
from ts.torch_handler.base_handler import BaseHandler

from tests.support.tiny_archive import TINY_MODEL

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


def form_request(index: int, fields: list[tuple[str, str, object]]) -> dict:
    """A multipart/form-data request as the frontend sends it to a worker: one parameter
    per form field (name, the part's content type, its value: a file's bytes, a text/*
    part decoded to str), the request's own Content-Type multipart (seen on TorchServe
    0.12 with `curl -F data=@cat.png`)."""
    content_type = b"multipart/form-data; boundary=------------------------74c3e2"
    return {
        "requestId": f"request-{index}".encode(),
        "parameters": [{"name": name, "contentType": part_type, "value": value}
                       for name, part_type, value in fields],
        "headers": [{"name": b"Content-Type", "value": content_type}],
    }


def torchserve_call(bodies: list[object], content_type: str = "application/json",
                    name: str = "body", context: Context | None = None) -> tuple[list, Context]:
    """The rows and context TorchServe hands the entry point for a batch of these bodies
    (`context`: a worker's context to reuse, as TorchServe reuses it for every batch)."""
    return torchserve_batch([frontend_request(index, body, content_type, name)
                             for index, body in enumerate(bodies)], context)


def torchserve_batch(batch: list[dict], context: Context | None = None) -> tuple[list, Context]:
    """The rows and context TorchServe hands the entry point for these frontend requests."""
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


TS_METRICS_CONFIG = Path(ts.__file__).parent / "configs" / "metrics.yaml"  # TorchServe's default


def tiny_model_context(model_dir: Path, handler_section: Mapping[str, object],
                       model_name: str = "tiny",
                       metrics_config: Path = TS_METRICS_CONFIG) -> Context:
    """A worker context for the tiny conv net written into `model_dir` (no weights file),
    with TorchServe's own metrics cache as a worker has it, read from `metrics_config`."""
    model_file = f"{model_name}_model.py"
    (model_dir / model_file).write_text(TINY_MODEL)
    manifest = {"model": {"modelName": model_name, "modelFile": model_file}}
    return metered_context(model_name, model_dir, manifest, {"handler": handler_section},
                           metrics_config)


def metered_context(model_name: str, model_dir: Path, manifest: Mapping[str, object],
                    model_yaml_config: Mapping[str, object],
                    metrics_config: Path = TS_METRICS_CONFIG) -> Context:
    """A worker context with TorchServe's own metrics cache, read from `metrics_config`."""
    metrics = MetricsCacheYamlImpl(str(metrics_config))
    metrics.model_name = model_name
    metrics.initialize_cache()
    return worker_context(model_name, str(model_dir), manifest, model_yaml_config, metrics)


def png(colour: tuple[int, int, int]) -> bytes:
    """A small one-colour PNG request body."""
    out = io.BytesIO()
    Image.new("RGB", (12, 10), colour).save(out, format="PNG")
    return out.getvalue()


def call(handler: BaseHandler, bodies: list[bytes]) -> tuple[list, Context]:
    """One batch of PNG requests through the handler's entry point, as a worker runs it."""
    rows, context = torchserve_call(bodies, "image/png", context=handler.context)
    return handler.handle(rows, context), context


def handler_times(records: list[logging.LogRecord]) -> list[str]:
    """The HandlerTime lines a worker prints for the frontend's model_metrics.log."""
    return [r.getMessage() for r in records
            if r.getMessage().startswith("[METRICS]HandlerTime.Milliseconds:")]
