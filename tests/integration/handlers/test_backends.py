"""Every backend against fp32 eager on every model, with the real weights/architectures."""

from __future__ import annotations

import pytest
import torch

from tests.support.models import eager_model, model_dir_for
from torchserve_cpu.handlers.model_config import parse_settings
from torchserve_cpu.handlers.optimize.accuracy import FP32_THRESHOLDS, compare
from torchserve_cpu.handlers.optimize.ipex_support import IpexStatus
from torchserve_cpu.handlers.optimize.optimizer import optimize
from torchserve_cpu.handlers.optimize.steps import call_stage
from torchserve_cpu.handlers.settings import HandlerSettings
from torchserve_cpu.handlers.tasks import make_task

NO_IPEX = IpexStatus(None, "not installed")
MODELS = ["resnet50", "bert", "minilm"]


def fresh_inputs(name: str, tmp_path) -> tuple[torch.Tensor, ...]:
    """Inputs other than the example the backend was built and checked on."""
    settings = parse_settings(_task_section(name))
    task = make_task(settings, model_dir_for(name, tmp_path))
    inputs = task.example_inputs(3)
    if name == "resnet50":
        return (inputs[0] * 0.5 + 0.1,)
    return inputs


def _task_section(name: str) -> dict:
    return {"resnet50": {"task": "image_classification"},
            "bert": {"task": "text_classification", "max_length": 64},
            "minilm": {"task": "text_embedding", "max_length": 64}}[name]


@pytest.mark.parametrize("preset", ["eager", "default", "jit", "compile"])
@pytest.mark.parametrize("name", MODELS)
def test_backend_matches_eager(name: str, preset: str, tmp_path) -> None:
    model = eager_model(name)
    settings = parse_settings({**_task_section(name), "optimize": preset})
    task = make_task(settings, model_dir_for(name, tmp_path))
    optimized = optimize(model, task.example_inputs(1), settings, NO_IPEX, task.classifies)
    assert optimized.plan.name == preset, optimized.rejected
    assert not optimized.rejected
    inputs = fresh_inputs(name, tmp_path)
    with torch.no_grad():
        reference = model(*inputs)
    agreement = compare(reference, call_stage(optimized.stage, inputs), FP32_THRESHOLDS)
    assert agreement.passed, agreement.failures
    if preset == "default" and name == "resnet50":
        assert optimized.stage.channels_last
        assert "native: native (conv+bn folded)" in optimized.stage.notes
    if preset == "default":
        assert isinstance(optimized.stage.module, torch.jit.ScriptModule)
        assert optimized.stage.onednn_graph
        assert "optimize_for_inference: skipped (oneDNN Graph fusion is on; they conflict)" \
            in optimized.stage.notes


def test_bf16_gate_passes_with_default_thresholds(tmp_path) -> None:
    settings = parse_settings({"task": "text_embedding", "max_length": 64, "dtype": "bf16"})
    task = make_task(settings, model_dir_for("minilm", tmp_path))
    optimized = optimize(eager_model("minilm"), task.example_inputs(2), settings, NO_IPEX,
                         task.classifies)
    assert optimized.dtype == "bf16", optimized.rejected
    assert optimized.agreement.cosine >= settings.gate.min_cosine


def test_bf16_gate_failure_falls_back_to_fp32(tmp_path) -> None:
    settings = parse_settings({"task": "image_classification", "dtype": "bf16",
                               "accuracy_gate": {"min_cosine": 0.99999999}})
    task = make_task(settings, model_dir_for("resnet50", tmp_path))
    optimized = optimize(eager_model("resnet50"), task.example_inputs(1), settings, NO_IPEX,
                         task.classifies)
    assert optimized.dtype == "fp32" and optimized.plan.name == "default"
    assert any("bf16 disagrees with eager: cosine" in reason for reason in optimized.rejected)


def test_failing_backend_falls_back_to_eager(tmp_path) -> None:
    """A model whose forward cannot be traced (data-dependent Python control flow)."""

    class Branchy(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if float(x.sum()) > 0:  # trace would bake in one branch; freeze then fails
                return torch.stack([x.sum(dim=(1, 2, 3)), -x.sum(dim=(1, 2, 3))], 1)
            raise RuntimeError("negative input")

    settings = HandlerSettings(optimize=("trace", "freeze", "compile"))
    example = (torch.ones(1, 3, 8, 8),)
    optimized = optimize(Branchy(), example, settings, NO_IPEX, classifies=True)
    assert optimized.plan.name == "eager"
    assert optimized.rejected and "custom" in optimized.rejected[0]


def test_auto_keeps_the_fastest_passing_candidate(tmp_path) -> None:
    settings = parse_settings({"task": "text_embedding", "max_length": 32, "optimize": "auto"})
    task = make_task(settings, model_dir_for("minilm", tmp_path))
    optimized = optimize(eager_model("minilm"), task.example_inputs(1), settings, NO_IPEX,
                         task.classifies)
    timings = dict(optimized.timings_ms)
    assert set(timings) == {"default[ipex_or_native>channels_last>onednn_graph>trace>freeze>"
                            "optimize_for_inference]", "compile[native>channels_last>compile]",
                            "eager[eager]"}
    assert timings[optimized.plan.describe()] == min(timings.values())
