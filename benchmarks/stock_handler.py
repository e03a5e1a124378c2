"""The `stock` baseline: a plain BaseHandler, eager model, our pre/post-processing.

TorchServe's own image handler needs torchvision (not usable here), so the baseline is what a
user writes by hand: BaseHandler's request loop, an eager fp32 model, no pinning, no thread
setting, no optimization. The model is built by the handler's own `build_served_model` with
`optimized=False` (eager fp32 as loaded, IPEX never imported), and pre- and post-processing are
the same task our handler uses, so the comparison measures serving and model execution, not
loading or decoding code.

The `threads` scenario sets BENCH_TORCH_THREADS in the server's environment; this handler then
calls `torch.set_num_threads` with it, as the tutorial's second configuration did.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from ts.torch_handler.base_handler import BaseHandler

from torchserve_cpu.handlers.envelopes import request_headers, request_payload
from torchserve_cpu.handlers.served_model import build_served_model
from torchserve_cpu.handlers.tasks import ModelInputs

#: The `threads` scenario's thread count. Defined here: this file runs inside TorchServe's
#: worker, where only the installed torchserve_cpu package is importable, not the harness.
THREADS_ENV = "BENCH_TORCH_THREADS"


class StockHandler(BaseHandler):
    """BaseHandler.handle (with its metrics) around an eager model; nothing CPU-specific."""

    def initialize(self, context: object) -> None:
        threads = os.environ.get(THREADS_ENV)
        if threads:
            torch.set_num_threads(int(threads))
        self.context = context
        yaml_config = getattr(context, "model_yaml_config", None) or {}
        self.served = build_served_model(
            Path(context.system_properties["model_dir"]),  # type: ignore[attr-defined]
            context.manifest,  # type: ignore[attr-defined]
            yaml_config.get("handler"),
            optimized=False,
        )
        self.initialized = True

    def preprocess(self, data: list[dict]) -> ModelInputs:
        task = self.served.task
        headers = request_headers(self.context)
        return task.collate([task.decode(*request_payload(row, headers[index]))
                             for index, row in enumerate(data)])

    def inference(self, data: ModelInputs, *args: object, **kwargs: object) -> torch.Tensor:
        with torch.inference_mode():
            return self.served(*data)

    def postprocess(self, data: torch.Tensor) -> list[object]:
        return self.served.task.answer(data)
