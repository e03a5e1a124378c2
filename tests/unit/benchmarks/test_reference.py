"""The raw-loop reference builds the archive's model as the server did (build_served_model)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import yaml

from benchmarks.reference import measure_reference
from tests.support.tiny_archive import TINY_MODEL
from tests.support.torchserve_calls import png
from torchserve_cpu.handlers.optimize.steps import set_onednn_graph

SECTION = {"task": "image_classification", "optimize": "jit", "image_size": 8,
           "resize_size": 8, "topk": 2}


def tiny_mar(path: Path) -> Path:
    """An archive as torch-model-archiver lays it out: manifest, model file, model-config."""
    manifest = {"model": {"modelName": "tiny", "modelFile": "tiny.py",
                          "configFile": "model-config.yaml", "handler": "h.py"}}
    with zipfile.ZipFile(path, "w") as mar:
        mar.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        mar.writestr("tiny.py", TINY_MODEL)
        mar.writestr("model-config.yaml", yaml.safe_dump({"handler": SECTION}))
    return path


def test_reference_runs_the_served_pipeline_or_the_stock_eager_model(tmp_path: Path) -> None:
    archive = tiny_mar(tmp_path / "tiny.mar")
    try:
        ours = measure_reference(archive, png((9, 99, 199)), "image/png", 2, 1, True, 0.2)
        stock = measure_reference(archive, png((9, 99, 199)), "image/png", 2, 1, False, 0.2)
    finally:
        set_onednn_graph(False)
    assert ours.pipeline == "jit[ipex_or_native>channels_last>trace>freeze>" \
        "optimize_for_inference]" and ours.dtype == "fp32"
    assert stock.pipeline == "eager[eager]" and stock.dtype == "fp32"
    assert ours.flops_per_item == stock.flops_per_item > 0
    assert ours.raw_items_per_s > 0 and stock.raw_items_per_s > 0
