"""The optimization vocabulary as data: presets, fallbacks, declared conflicts, and the
runner honouring them on a tiny conv net (cheap steps only)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from torchserve_cpu.handlers.model_config import parse_settings
from torchserve_cpu.handlers.optimize.ipex_support import IpexStatus
from torchserve_cpu.handlers.optimize.optimizer import candidate_plans
from torchserve_cpu.handlers.optimize.pipeline import (
    AUTO_ORDER,
    FALLBACKS,
    PRESET_NAMES,
    PRESET_STEPS,
    STEPS,
    StepPlan,
    run_steps,
)
from torchserve_cpu.handlers.optimize.steps import StepContext, set_onednn_graph
from torchserve_cpu.handlers.settings import HandlerSettings

NO_IPEX = IpexStatus(None, "not installed")
# ipex.optimize's contract as the step uses it, on a module it leaves as it is
FAKE_IPEX = IpexStatus(SimpleNamespace(optimize=lambda module, dtype, inplace: module),
                       "ipex 0.0 (stand-in)")


def tiny_conv_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                               torch.nn.ReLU(), torch.nn.Flatten()).eval()


def context(ipex: IpexStatus = NO_IPEX) -> StepContext:
    return StepContext(example=(torch.randn(1, 3, 6, 6),), ipex=ipex, channels_last=None)


def test_every_name_in_the_vocabulary_is_defined() -> None:
    assert all(step in STEPS for steps in PRESET_STEPS.values() for step in steps)
    assert all(name in PRESET_STEPS for name in AUTO_ORDER)
    assert all(name in PRESET_STEPS for chain in FALLBACKS.values() for name in chain)
    assert all(name in PRESET_STEPS for name in FALLBACKS)
    assert all(earlier in STEPS for step in STEPS.values() for earlier in step.skipped_after)
    assert PRESET_NAMES == ("eager", "default", "jit", "compile", "aot", "auto")


def test_settings_accept_exactly_the_vocabulary() -> None:
    for name in PRESET_NAMES:
        assert parse_settings({"optimize": name}).optimize == name
    assert parse_settings({"optimize": list(STEPS)}).optimize == tuple(STEPS)


@pytest.mark.parametrize(("section", "plans"), [
    ({}, ["default[ipex_or_native>channels_last>onednn_graph>trace>freeze>"
          "optimize_for_inference]",
          "jit[ipex_or_native>channels_last>trace>freeze>optimize_for_inference]",
          "eager[eager]"]),
    ({"optimize": "compile", "dtype": "bf16"},
     ["compile[native>channels_last>compile] bf16", "compile[native>channels_last>compile]",
      "eager[eager]"]),
    ({"optimize": "eager", "dtype": "bf16"}, ["eager[eager] bf16", "eager[eager]"]),
    ({"optimize": "auto"}, ["default[ipex_or_native>channels_last>onednn_graph>trace>freeze>"
                            "optimize_for_inference]", "compile[native>channels_last>compile]",
                            "eager[eager]"]),
    ({"optimize": ["trace", "freeze"]}, ["custom[trace>freeze]", "eager[eager]"]),
])
def test_candidate_plans_follow_presets_fallbacks_and_auto_order(section: dict,
                                                                 plans: list[str]) -> None:
    assert [plan.describe() for plan in candidate_plans(parse_settings(section))] == plans


def test_steps_after_ipex_skip_as_declared() -> None:
    stage = run_steps(tiny_conv_net(), StepPlan("custom", ("ipex_or_native", "channels_last",
                                                           "onednn_graph")), context(FAKE_IPEX))
    assert stage.applied == ("ipex", "channels_last", "onednn_graph")
    assert stage.skipped == ("channels_last", "onednn_graph")
    assert "channels_last: skipped (IPEX prepacked the weights)" in stage.notes
    assert "onednn_graph: skipped (IPEX fuses on its own)" in stage.notes
    assert not stage.channels_last and not stage.onednn_graph


def test_optimize_for_inference_skips_only_where_onednn_graph_took_effect() -> None:
    steps = ("native", "onednn_graph", "trace", "freeze", "optimize_for_inference")
    try:
        fused = run_steps(tiny_conv_net(), StepPlan("custom", steps), context())
        ipex = run_steps(tiny_conv_net(), StepPlan("custom", ("ipex", *steps[1:])),
                         context(FAKE_IPEX))
    finally:
        set_onednn_graph(False)
    assert fused.onednn_graph and "optimize_for_inference" in fused.skipped
    assert "optimize_for_inference: skipped (oneDNN Graph fusion is on; they conflict)" \
        in fused.notes
    assert "onednn_graph" in ipex.skipped and "optimize_for_inference" not in ipex.skipped


def test_the_callers_model_is_never_changed() -> None:
    model = tiny_conv_net()
    weight = model[0].weight
    stage = run_steps(model, StepPlan("custom", ("channels_last",)), context())
    assert stage.channels_last and stage.module is not model
    assert weight.is_contiguous() and model[0].weight is weight
    assert run_steps(model, StepPlan("eager", ()), context()).module is model  # nothing to copy


def test_default_settings_pipeline_is_the_default_preset() -> None:
    assert candidate_plans(HandlerSettings())[0].steps == PRESET_STEPS["default"]
