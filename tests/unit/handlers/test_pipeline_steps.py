"""Each step of the vocabulary on a tiny conv net, and the runner's bookkeeping: what a
step returns, what it records, what it refuses, and that answers stay those of eager."""

from __future__ import annotations

import copy
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from torchserve_cpu.handlers.optimize import pipeline
from torchserve_cpu.handlers.optimize.ipex_support import IpexStatus
from torchserve_cpu.handlers.optimize.pipeline import STEPS, Step, StepPlan, run_steps
from torchserve_cpu.handlers.optimize.steps import (
    Stage,
    StepContext,
    StepError,
    call_stage,
    has_convolutions,
    native_optimize,
    prepare_inputs,
    run_mode,
    set_onednn_graph,
    step_channels_last,
    step_compile,
    step_freeze,
    step_ipex,
    step_ipex_or_native,
    step_native,
    step_onednn_graph,
    step_optimize_for_inference,
    step_trace,
)

NO_IPEX = IpexStatus(None, "not installed")
EXAMPLE = (torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0)),)


class FakeIpex:
    """ipex.optimize's contract as step_ipex uses it; remembers how it was called."""

    def __init__(self) -> None:
        self.calls: list[tuple[nn.Module, torch.dtype, bool]] = []

    def optimize(self, module: nn.Module, dtype: torch.dtype, inplace: bool) -> nn.Module:
        self.calls.append((module, dtype, inplace))
        return module


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
    with torch.no_grad():  # BN statistics that folding must carry over
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    return net.eval()


def linear_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(108, 5)).eval()


def ctx(ipex: IpexStatus = NO_IPEX, channels_last: bool | None = None) -> StepContext:
    return StepContext(example=EXAMPLE, ipex=ipex, channels_last=channels_last)


def eager_output(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(*EXAMPLE)


@pytest.fixture(autouse=True)
def onednn_graph_off():
    yield
    set_onednn_graph(False)


# -- Stage and StepPlan ---------------------------------------------------------------

def test_stage_records_steps_notes_and_skips() -> None:
    first = Stage(module=linear_net())
    second = first.then("a", first.module, "did a", bf16=True)
    assert second.applied == ("a",) and second.notes == ("a: did a",) and second.bf16
    third = second.then("b", first.module)
    assert third.applied == ("a", "b") and third.notes == ("a: did a",)
    skipped = third.skip("c", "no reason to")
    assert skipped.applied == ("a", "b", "c") and skipped.skipped == ("c",)
    assert skipped.notes == ("a: did a", "c: skipped (no reason to)")
    assert skipped.module is first.module
    assert skipped.took_effect("a") and not skipped.took_effect("c")
    assert not skipped.took_effect("d")
    assert first.applied == () and first.notes == ()  # stages are values


def test_plan_describe() -> None:
    assert StepPlan("eager", ()).describe() == "eager[eager]"
    assert StepPlan("p", ("a", "b")).describe() == "p[a>b]"
    assert StepPlan("p", ("a",), bf16=True).describe() == "p[a] bf16"


# -- inputs and run mode ---------------------------------------------------------------

def test_prepare_inputs_makes_only_images_channels_last() -> None:
    image, ids = torch.randn(1, 3, 4, 4), torch.ones(1, 7, dtype=torch.long)
    assert prepare_inputs((image, ids), False) == (image, ids)
    prepared, same_ids = prepare_inputs((image, ids), True)
    assert prepared.is_contiguous(memory_format=torch.channels_last)
    assert not image.is_contiguous(memory_format=torch.channels_last)
    assert same_ids is ids
    torch.testing.assert_close(prepared, image)


def test_run_mode_is_no_grad_with_bf16_autocast_on_request() -> None:
    weight = torch.randn(4, 4, requires_grad=True)
    with run_mode(False):
        out = torch.randn(2, 4) @ weight
        assert out.dtype == torch.float32 and not out.requires_grad
    with run_mode(True):
        out = torch.randn(2, 4) @ weight
        assert out.dtype == torch.bfloat16 and not out.requires_grad


def test_call_stage_returns_fp32_and_feeds_the_layout_the_stage_wants() -> None:
    seen = []

    def module(x: torch.Tensor) -> torch.Tensor:
        seen.append((x.is_contiguous(memory_format=torch.channels_last), torch.is_grad_enabled(),
                     torch.is_autocast_enabled("cpu")))
        return x.bfloat16()

    out = call_stage(Stage(module, channels_last=True, autocast=True), EXAMPLE)
    assert out.dtype == torch.float32 and seen == [(True, False, True)]
    call_stage(Stage(module), EXAMPLE)
    assert seen[-1] == (False, False, False)


def test_has_convolutions() -> None:
    assert has_convolutions(conv_net())
    assert has_convolutions(nn.Sequential(nn.Conv3d(1, 1, 1)))
    assert not has_convolutions(linear_net())
    assert not has_convolutions(lambda x: x)


# -- steps ---------------------------------------------------------------------------

def test_native_folds_batch_norm_into_a_copy() -> None:
    net = conv_net()
    folded, note = native_optimize(net)
    assert note == "native (conv+bn folded)"
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())  # caller's untouched
    assert not folded.training and not any(p.requires_grad for p in folded.parameters())
    assert all(p.requires_grad for p in net.parameters())
    torch.testing.assert_close(eager_output(folded), eager_output(net))


def test_native_without_batch_norm_is_a_plain_eval_copy() -> None:
    net = linear_net().train()
    module, note = native_optimize(net)
    assert note == "native" and module is not net and not module.training and net.training
    assert not any(p.requires_grad for p in module.parameters())


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return y if y.sum() > 0 else -y


def test_native_keeps_a_model_fx_cannot_trace() -> None:
    net = Branchy().eval()
    module, note = native_optimize(net)
    assert note == "native (no conv+bn folding: TraceError)"
    assert isinstance(module, Branchy) and module is not net and not module.training


def test_step_native_records_its_note() -> None:
    stage = step_native(Stage(conv_net()), ctx())
    assert stage.applied == ("native",) and stage.notes == ("native: native (conv+bn folded)",)


def test_steps_that_need_an_eager_module_refuse_anything_else() -> None:
    loaded = Stage(SimpleNamespace())  # say, a loaded AOTInductor package
    usable = IpexStatus(FakeIpex(), "ipex 9.9")
    for step, name in [(step_native, "native"), (step_channels_last, "channels_last"),
                       (step_compile, "compile"), (step_trace, "trace"), (step_ipex, "ipex")]:
        with pytest.raises(StepError, match=f"^{name} needs an eager nn.Module, got "
                                            "SimpleNamespace$"):
            step(loaded, ctx(usable))


def test_ipex_step_without_ipex_says_why() -> None:
    with pytest.raises(StepError, match=r"^Intel Extension for PyTorch unusable: not installed$"):
        step_ipex(Stage(conv_net()), ctx())


@pytest.mark.parametrize(("bf16", "dtype"), [(False, torch.float32), (True, torch.bfloat16)])
def test_ipex_step_optimizes_an_eval_copy_at_the_stage_precision(bf16: bool,
                                                                 dtype: torch.dtype) -> None:
    fake = FakeIpex()
    net = conv_net().train()
    stage = step_ipex(Stage(net, bf16=bf16), ctx(IpexStatus(fake, "ipex 9.9")))
    [(module, called_dtype, inplace)] = fake.calls
    assert called_dtype == dtype and inplace is True
    assert module is not net and not module.training and net.training
    assert not any(p.requires_grad for p in module.parameters())
    # a deep copy: the caller's layers and parameters are untouched
    assert all(m.training for m in net.modules())
    assert all(p.requires_grad for p in net.parameters())
    assert stage.module is module and stage.applied == ("ipex",)
    assert stage.notes == ("ipex: ipex 9.9",) and stage.autocast is bf16


def test_ipex_or_native_takes_ipex_when_usable_and_says_why_not() -> None:
    usable = step_ipex_or_native(Stage(conv_net()), ctx(IpexStatus(FakeIpex(), "ipex 9.9")))
    assert usable.applied == ("ipex",)
    native = step_ipex_or_native(Stage(conv_net()), ctx())
    assert native.applied == ("native",)
    assert native.notes == ("native: native (conv+bn folded)", "ipex skipped: not installed")


@pytest.mark.parametrize(("model", "wanted", "converted"), [
    (conv_net, None, True), (linear_net, None, False),  # decided by the model
    (linear_net, True, True), (conv_net, False, False),  # handler.channels_last
])
def test_channels_last(model, wanted: bool | None, converted: bool) -> None:
    stage = step_channels_last(Stage(model()), ctx(channels_last=wanted))
    assert stage.channels_last is converted
    if converted:
        assert stage.applied == ("channels_last",) and stage.skipped == ()
        weights = [p for p in stage.module.parameters() if p.dim() == 4]
        assert all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    else:
        assert stage.skipped == ("channels_last",)
        assert stage.notes == ("channels_last: skipped (no convolutions)",)


def test_trace_records_a_graph_that_answers_like_eager() -> None:
    net = conv_net()
    stage = step_trace(Stage(copy.deepcopy(net), channels_last=True), ctx())
    assert isinstance(stage.module, torch.jit.ScriptModule) and stage.applied == ("trace",)
    assert not stage.autocast
    torch.testing.assert_close(call_stage(stage, EXAMPLE), eager_output(net))
    again = step_trace(stage, ctx())
    assert again.module is stage.module and again.skipped == ("trace",)
    assert again.notes == ("trace: skipped (already TorchScript)",)


def test_trace_at_bf16_holds_the_casts_and_runs_without_autocast() -> None:
    net = conv_net()
    net[0].weight.requires_grad_(True)  # would be a constant that requires grad
    stage = step_trace(Stage(net, bf16=True, autocast=True), ctx())
    assert not stage.autocast
    out = stage.module(*EXAMPLE)  # no autocast here: the casts are in the graph
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), eager_output(conv_net()), atol=0.1, rtol=0.05)


def test_trace_records_the_served_layout_without_a_second_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The example is traced in the layout the stage serves (channels-last weights fed a
    contiguous input would record layout conversions) and without trace's re-run check (a
    second forward at every worker start); parameters stop requiring grad."""
    seen = []
    real_trace = torch.jit.trace

    def spy(module, example, **kwargs):
        seen.append(([x.is_contiguous(memory_format=torch.channels_last) for x in example],
                     kwargs.get("check_trace")))
        return real_trace(module, example, **kwargs)

    monkeypatch.setattr(torch.jit, "trace", spy)
    model = conv_net().requires_grad_(True)
    stage = step_trace(Stage(model, channels_last=True), ctx())
    assert seen == [([True], False)]
    assert not any(p.requires_grad for p in stage.module.parameters())
    torch.testing.assert_close(call_stage(stage, EXAMPLE), eager_output(conv_net()))


def test_freeze_and_optimize_for_inference_need_a_traced_model() -> None:
    with pytest.raises(StepError, match=r"^freeze needs a traced model: put 'trace' before "
                                        r"'freeze'$"):
        step_freeze(Stage(conv_net()), ctx())
    with pytest.raises(StepError, match=r"^optimize_for_inference needs a traced model$"):
        step_optimize_for_inference(Stage(conv_net()), ctx())


def test_freeze_then_optimize_for_inference() -> None:
    net = conv_net()
    traced = step_trace(Stage(copy.deepcopy(net)), ctx())
    frozen = step_freeze(traced, ctx())
    assert frozen.applied == ("trace", "freeze") and not list(frozen.module.parameters())
    assert list(traced.module.parameters())
    optimized = step_optimize_for_inference(frozen, ctx())
    assert optimized.applied == ("trace", "freeze", "optimize_for_inference")
    torch.testing.assert_close(call_stage(optimized, EXAMPLE), eager_output(net))


def test_onednn_graph_turns_the_process_switch_on() -> None:
    set_onednn_graph(False)
    net = linear_net()
    stage = step_onednn_graph(Stage(net), ctx())
    assert torch.jit.onednn_fusion_enabled() and stage.onednn_graph
    assert stage.module is net and stage.applied == ("onednn_graph",)
    set_onednn_graph(False)
    assert not torch.jit.onednn_fusion_enabled()


@pytest.mark.parametrize("bf16", [False, True])
def test_compile_asks_inductor_to_freeze(monkeypatch: pytest.MonkeyPatch, bf16: bool) -> None:
    calls = []

    def fake_compile(module: nn.Module, **kwargs: object) -> object:
        calls.append((module, kwargs))
        return SimpleNamespace(compiled=module)

    monkeypatch.setattr(torch, "compile", fake_compile)
    net = conv_net()
    stage = step_compile(Stage(net, bf16=bf16), ctx())
    [(module, kwargs)] = calls
    assert module is net and not any(p.requires_grad for p in net.parameters())
    assert kwargs == {"backend": "inductor", "options": {"freezing": True}}
    assert stage.module.compiled is net and stage.applied == ("compile",)
    assert stage.autocast is bf16


def test_compile_passes_the_pt2_section_s_options_with_freezing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: calls.append(kwargs))
    options = {"mode": "max-autotune", "options": {"max_autotune": True, "freezing": False}}
    step_compile(Stage(conv_net()), replace(ctx(), compile_options=options))
    # the user's inductor options win, freezing included; torch.compile's own keys pass on
    assert calls == [{"backend": "inductor", "mode": "max-autotune",
                      "options": {"freezing": False, "max_autotune": True}}]


# -- the runner ----------------------------------------------------------------------

def test_runner_starts_at_the_plans_precision() -> None:
    stage = run_steps(linear_net(), StepPlan("eager", (), bf16=True), ctx())
    assert stage.bf16 and stage.autocast and stage.applied == ()
    fp32 = run_steps(linear_net(), StepPlan("eager", ()), ctx())
    assert not fp32.bf16 and not fp32.autocast


def test_runner_copies_only_for_steps_that_do_not_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    received = []

    def record(stage: Stage, ctx: StepContext) -> Stage:
        received.append(stage.module)
        return stage.then("record", stage.module)

    net = linear_net().train()
    monkeypatch.setitem(STEPS, "record", Step(record))
    monkeypatch.setitem(STEPS, "record_copies", Step(record, copies_module=True))
    run_steps(net, StepPlan("p", ("record",)), ctx())
    assert received[-1] is not net and not received[-1].training and net.training
    run_steps(net, StepPlan("p", ("record_copies", "record")), ctx())
    assert received[-2] is net and received[-1] is net


def test_runner_skips_a_step_after_a_declared_conflict_only_if_it_took_effect(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def late(stage: Stage, ctx: StepContext) -> Stage:
        calls.append(stage.applied)
        return stage.then("late", stage.module)

    monkeypatch.setitem(STEPS, "late", Step(late, skipped_after={"channels_last": "why",
                                                                 "trace": "other"}))
    done = run_steps(conv_net(), StepPlan("p", ("channels_last", "late")), ctx())
    assert calls == [] and done.skipped == ("late",) and done.notes[-1] == "late: skipped (why)"
    # channels_last skipped itself (no convolutions): `late` runs
    ran = run_steps(linear_net(), StepPlan("p", ("channels_last", "late")), ctx())
    assert calls == [("channels_last",)] and ran.applied == ("channels_last", "late")
    assert ran.skipped == ("channels_last",)


def test_default_preset_on_a_conv_net_answers_like_eager() -> None:
    net = conv_net()
    stage = run_steps(net, StepPlan("default", pipeline.PRESET_STEPS["default"]), ctx())
    assert stage.applied == ("native", *pipeline.PRESET_STEPS["default"][1:])
    assert stage.skipped == ("optimize_for_inference",) and stage.channels_last
    assert stage.onednn_graph
    torch.testing.assert_close(call_stage(stage, EXAMPLE), eager_output(net), atol=1e-4,
                               rtol=1e-4)
