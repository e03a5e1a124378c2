"""The `stock` baseline handler in TorchServe's own request flow (real Context and metrics):
eager fp32 whatever the archive asks, built by the handler's own build_served_model."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from benchmarks.stock_handler import StockHandler
from tests.support.torchserve_calls import call, handler_times, png, tiny_model_context
from torchserve_cpu.handlers.served_model import NOT_PROBED


def test_stock_serves_eager_fp32_with_basehandler_metrics(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    section = {"task": "image_classification", "optimize": "default", "dtype": "bf16",
               "image_size": 8, "resize_size": 8, "topk": 2}
    handler = StockHandler()
    handler.initialize(tiny_model_context(tmp_path, section))
    assert handler.served.model.plan.describe() == "eager[eager]"
    assert handler.served.ipex == NOT_PROBED
    with caplog.at_level(logging.INFO):
        answers, _ = call(handler, [png((200, 30, 30)), png((30, 30, 200))])
    assert [len(answer) for answer in answers] == [2, 2]  # {label: probability}, top 2
    assert len(handler_times(caplog.records)) == 1


def test_stock_handler_imports_only_what_a_worker_has() -> None:
    """The file runs in TorchServe's worker, where the harness (benchmarks, tests) is not
    importable: an import of it killed every stock worker (ModuleNotFoundError)."""
    import ast

    import benchmarks.stock_handler as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    assert not imported & {"benchmarks", "tests"}, imported
