"""The `stock` baseline: a plain BaseHandler, eager model, our pre/post-processing.

TorchServe's own image handler needs torchvision (not usable here), so the baseline is what a
user writes by hand: BaseHandler's request loop, an eager fp32 model, no pinning, no thread
setting, no optimization. Pre- and post-processing are the same functions our handler uses, so
the comparison measures serving and model execution, not decoding code.

The `threads` scenario sets BENCH_TORCH_THREADS in the server's environment; this handler then
calls `torch.set_num_threads` with it, as the tutorial's second configuration did.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from ts.torch_handler.base_handler import BaseHandler

from benchmarks.scenarios import THREADS_ENV
from torchserve_cpu.handlers.loading import load_model
from torchserve_cpu.handlers.optimizing_handler import header
from torchserve_cpu.handlers.settings import parse_settings
from torchserve_cpu.handlers.tasks import Inputs, make_task


class StockHandler(BaseHandler):
    """BaseHandler.handle (with its metrics) around an eager model; nothing CPU-specific."""

    def initialize(self, context: object) -> None:
        threads = os.environ.get(THREADS_ENV)
        if threads:
            torch.set_num_threads(int(threads))
        self.context = context
        model_dir = Path(context.system_properties["model_dir"])  # type: ignore[attr-defined]
        yaml_config = getattr(context, "model_yaml_config", None) or {}
        settings = parse_settings(yaml_config.get("handler"))
        self.task = make_task(settings, model_dir)
        self.model = load_model(model_dir, context.manifest)  # type: ignore[attr-defined]
        self.initialized = True

    def preprocess(self, data: list[dict]) -> Inputs:
        samples = []
        for index, row in enumerate(data):
            body = row.get("data") if row.get("data") is not None else row.get("body")
            samples.append(self.task.decode(body, header(self.context, index, "content-type")))
        return self.task.collate(samples)

    def inference(self, data: Inputs, *args: object, **kwargs: object) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(*data)

    def postprocess(self, data: torch.Tensor) -> list[object]:
        return self.task.answer(data)
