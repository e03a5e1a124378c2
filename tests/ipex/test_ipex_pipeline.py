"""ipex.optimize in the handler's default pipeline, on the real models, fp32 and bf16.

Checked the way a user would: the optimizer keeps the IPEX candidate (no fallback), the
frozen graph runs IPEX's fused kernels after the profiling executor's warm-up runs, and
outputs on inputs other than the example stay within the accuracy gate.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.support.ipex_lane import IPEX, requires_ipex
from tests.support.models import eager_model, model_dir_for
from torchserve_cpu.handlers.model_config import parse_settings
from torchserve_cpu.handlers.optimize.accuracy import compare
from torchserve_cpu.handlers.optimize.optimizer import optimize, thresholds_for
from torchserve_cpu.handlers.optimize.steps import call_stage, prepare_inputs
from torchserve_cpu.handlers.tasks import make_task

pytestmark = [requires_ipex, pytest.mark.integration]

SECTIONS = {"resnet50": {"task": "image_classification"},
            "bert": {"task": "text_classification", "max_length": 64}}
# Fused ops seen in graph_for with IPEX 2.8.0 (bf16 BERT's linears fuse with add/gelu).
FUSED = {
    ("resnet50", "fp32"): ["ipex_prepack::convolution_relu_run",
                           "ipex_prepack::convolution_bottleneck_run"],
    ("resnet50", "bf16"): ["ipex_prepack::convolution_relu_run",
                           "ipex_prepack::convolution_bottleneck_run"],
    ("bert", "fp32"): ["ipex::add_layernorm", "ipex_prepack::mkl_sgemm_run"],
    ("bert", "bf16"): ["ipex_prepack::linear_add_run", "ipex_prepack::linear_gelu_run"],
}


def graph_ops(module: torch.jit.ScriptModule, inputs: tuple[torch.Tensor, ...]) -> Counter:
    """Op kinds of the graph the profiling executor specialised for `inputs`."""
    return Counter(re.findall(r"= ([\w:]+)\(", str(module.graph_for(*inputs))))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("name", ["resnet50", "bert"])
def test_default_pipeline_applies_ipex(name: str, dtype: str, tmp_path: Path) -> None:
    settings = parse_settings({**SECTIONS[name], "dtype": dtype})
    task = make_task(settings, model_dir_for(name, tmp_path))
    model = eager_model(name)
    chosen = optimize(model, task.example_inputs(1), settings, IPEX, task.classifies)
    assert not chosen.rejected
    assert chosen.plan.name == "default" and chosen.dtype == dtype
    assert chosen.stage.applied[0] == "ipex"
    assert f"ipex: {IPEX.reason}" in chosen.stage.notes

    inputs = task.example_inputs(3)
    if name == "resnet50":
        inputs = (inputs[0] * 0.5 + 0.1,)
    for _ in range(3):  # the profiling executor fuses on the second run
        call_stage(chosen.stage, inputs)
    module = chosen.stage.module
    assert isinstance(module, torch.jit.ScriptModule)
    ops = graph_ops(module, prepare_inputs(inputs, chosen.stage.channels_last))
    for op in FUSED[(name, dtype)]:
        assert ops[op] >= 1, sorted(ops)
    assert not ops["aten::conv2d"] and not ops["aten::linear"], sorted(ops)

    with torch.no_grad():
        reference = model(*inputs)
    agreement = compare(reference, call_stage(chosen.stage, inputs),
                        thresholds_for(chosen.plan, settings, task.classifies))
    assert agreement.passed, agreement.failures


def test_channels_last_request_keeps_ipex_pipeline(tmp_path: Path) -> None:
    """IPEX's prepacked convs cannot be converted to channels-last: the step must skip."""
    settings = parse_settings({"task": "image_classification", "channels_last": True})
    task = make_task(settings, model_dir_for("resnet50", tmp_path))
    chosen = optimize(eager_model("resnet50"), task.example_inputs(1), settings, IPEX, True)
    assert not chosen.rejected and chosen.plan.name == "default"
    assert "channels_last: skipped (IPEX prepacked the weights)" in chosen.stage.notes


def test_graph_that_breaks_after_profiling_is_rejected(tmp_path: Path) -> None:
    """With IPEX imported, its fusion pass breaks a native graph after optimize_for_inference
    on the second call: the optimizer must see that and fall back, not serve it."""
    steps = ["native", "channels_last", "trace", "freeze", "optimize_for_inference"]
    settings = parse_settings({"task": "image_classification", "optimize": steps})
    task = make_task(settings, model_dir_for("resnet50", tmp_path))
    chosen = optimize(eager_model("resnet50"), task.example_inputs(1), settings, IPEX, True)
    assert chosen.plan.name == "eager"
    # The interpreter's first line is all the optimizer keeps; the cause is further down.
    assert chosen.rejected[0].startswith("custom[native>") and "RuntimeError" in chosen.rejected[0]
    for _ in range(3):
        chosen(*task.example_inputs(1))
