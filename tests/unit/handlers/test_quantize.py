"""`handler.dtype: int8` on tiny models: static int8 (PT2E) for a conv net, dynamic int8 for
Linear layers, both through the real optimizer and its accuracy gate; the sensitivity search
leaves the module whose quantization hurts in fp32 and says so; a corrupted int8 model is
refused with the reason logged and fp32 served; archive inputs read as requests are."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from torchserve_cpu.handlers.model_config import parse_settings
from torchserve_cpu.handlers.optimize import quantize
from torchserve_cpu.handlers.optimize.archive_inputs import (
    CheckInputs,
    check_inputs,
    read_archive_inputs,
)
from torchserve_cpu.handlers.optimize.ipex_support import IpexStatus
from torchserve_cpu.handlers.optimize.optimizer import candidate_plans, optimize
from torchserve_cpu.handlers.optimize.pipeline import INT8_PLAN, PRESET_STEPS, StepPlan
from torchserve_cpu.handlers.settings import GATE_OFF, HandlerSettings
from torchserve_cpu.handlers.tasks import make_task

NO_IPEX = IpexStatus(None, "not installed")


class TinyConvNet(nn.Module):
    """Two conv blocks and a classifier: what static int8 quantizes (conv+bn+relu, linear)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class TinyEncoder(nn.Module):
    """Linear layers only (as BERT's are): dynamic int8's case."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def real_images(count: int = 16) -> torch.Tensor:
    """Smooth images with structure (gradients and blobs), not white noise: calibration on
    them sees the activation ranges real pictures give."""
    generator = torch.Generator().manual_seed(1)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    images = []
    for _ in range(count):
        cx, cy, r = (torch.rand(3, generator=generator) * 1.2 - 0.6).tolist()
        blob = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (0.1 + abs(r)))
        colour = torch.rand(3, 1, 1, generator=generator) * 2 - 1
        images.append(colour * blob + 0.3 * xs * torch.rand(1, generator=generator))
    return torch.stack(images)


def conv_check() -> CheckInputs:
    return CheckInputs((real_images(),), batch=1)


def test_int8_conv_net_passes_the_gate() -> None:
    chosen = optimize(TinyConvNet(), (real_images(1),), HandlerSettings(dtype="int8"), NO_IPEX,
                      classifies=True, check=conv_check())
    assert chosen.plan == INT8_PLAN and chosen.dtype == "int8", chosen.rejected
    assert chosen.stage.applied == ("int8", "compile")
    assert chosen.stage.channels_last
    assert any("static (PT2E, X86InductorQuantizer, 8-bit activations, calibrated on 16 "
               "inputs)" in note for note in chosen.stage.notes), chosen.stage.notes
    assert chosen.agreement.passed and chosen.agreement.cosine > 0.99
    assert chosen(real_images(2)).shape == (2, 10)  # serves another batch size


def test_int8_linear_layers_pass_the_gate() -> None:
    inputs = torch.randn(12, 64, generator=torch.Generator().manual_seed(2))
    chosen = optimize(TinyEncoder(), (inputs[:1],), HandlerSettings(dtype="int8"), NO_IPEX,
                      classifies=False, check=CheckInputs((inputs,), batch=1))
    assert chosen.plan == INT8_PLAN, chosen.rejected
    assert chosen.stage.applied == ("int8", "compile")
    assert any("dynamic (torchao" in note for note in chosen.stage.notes)
    assert chosen.agreement.cosine > 0.99


def corrupt_scales(monkeypatch: pytest.MonkeyPatch) -> None:
    """Static int8 whose activation scales are 50x too small: activations saturate."""
    original = quantize.quantize_pt2e
    per_tensor = (torch.ops.quantized_decomposed.quantize_per_tensor.default,
                  torch.ops.quantized_decomposed.dequantize_per_tensor.default)

    def corrupted(*args: object, **kwargs: object) -> tuple[nn.Module, int]:
        model, rows = original(*args, **kwargs)
        nodes = [n for n in model.graph.nodes if n.target in per_tensor]
        assert nodes, "no per-tensor q/dq node"
        for node in nodes:
            node.args = (node.args[0], node.args[1] / 50.0, *node.args[2:])
        model.recompile()
        return model, rows

    monkeypatch.setattr(quantize, "quantize_pt2e", corrupted)


def test_corrupted_int8_is_refused_logged_and_fp32_served(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    corrupt_scales(monkeypatch)
    settings = HandlerSettings(dtype="int8", optimize="jit")
    with caplog.at_level(logging.WARNING, logger="torchserve_cpu.handlers.optimize.optimizer"):
        chosen = optimize(TinyConvNet(), (real_images(1),), settings, NO_IPEX,
                          classifies=True, check=conv_check())
    assert chosen.plan == StepPlan("jit", PRESET_STEPS["jit"]) and chosen.dtype == "fp32"
    refusal = chosen.rejected[0]
    assert refusal.startswith("quantized[int8] int8 disagrees with eager: cosine")
    assert refusal in caplog.text


def test_gate_off_serves_int8_unchecked_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    corrupt_scales(monkeypatch)
    settings = parse_settings({"dtype": "int8", "accuracy_gate": False})
    assert settings.gate == GATE_OFF
    chosen = optimize(TinyConvNet(), (real_images(1),), settings, NO_IPEX, classifies=True,
                      check=conv_check())
    assert chosen.plan == INT8_PLAN and not chosen.rejected
    assert "accuracy gate off: not checked against fp32 eager (speed only)" in chosen.stage.notes


def test_int8_is_tried_first_then_the_fp32_chain() -> None:
    plans = candidate_plans(parse_settings({"dtype": "int8"}))
    assert [p.describe() for p in plans][:1] == ["quantized[int8] int8"]
    assert [p.name for p in plans[1:]] == ["default", "jit", "eager"]
    assert not any(p.bf16 or p.int8 for p in plans[1:])


def test_calibration_setting_is_a_path() -> None:
    assert parse_settings({"calibration": "calibration"}).calibration == "calibration"
    for bad in ("", 3, ["a"]):
        with pytest.raises(ValueError, match=r"handler\.calibration"):
            parse_settings({"calibration": bad})


def jpeg(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((40, 60, 3), colour, dtype=np.uint8)).save(out, "JPEG")
    return out.getvalue()


def test_archive_folder_is_decoded_as_requests(tmp_path: Path) -> None:
    folder = tmp_path / "calibration"
    folder.mkdir()
    for index, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        (folder / f"{index}.jpg").write_bytes(jpeg(colour))
    settings = parse_settings({"image_size": 16, "resize_size": 16,
                               "calibration": "calibration"})
    task = make_task(settings, tmp_path)
    (inputs,) = read_archive_inputs(tmp_path, "calibration", task)
    assert inputs.shape == (3, 3, 16, 16)
    assert inputs[0, 0].mean() > inputs[0, 1].mean()  # the red one first (sorted by name)
    check = check_inputs(settings, task, tmp_path, task.example_inputs(2))
    assert check is not None and check.count == 3 and check.batch == 2
    assert check.outputs(lambda part: part[0].mean((1, 2, 3))).shape == (3,)


def test_archive_tensor_file_and_mistakes(tmp_path: Path) -> None:
    task = make_task(parse_settings(None), tmp_path)
    torch.save(torch.zeros(4, 3, 8, 8), tmp_path / "inputs.pt")
    assert read_archive_inputs(tmp_path, "inputs.pt", task)[0].shape == (4, 3, 8, 8)
    torch.save([torch.zeros(4, 2), torch.zeros(3, 2)], tmp_path / "ragged.pt")
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"not an image")
    for name, says in [("ragged.pt", "same batch size"), ("empty", "has no files"),
                       ("bad", "x.jpg: cannot decode"), ("missing", "neither a folder"),
                       ("../outside", "outside the archive")]:
        with pytest.raises(ValueError, match=f"handler.calibration: .*{says}"):
            read_archive_inputs(tmp_path, name, task)


def test_calibration_takes_at_most_128_rows_spread_over_the_set() -> None:
    rows = torch.arange(300.0).view(300, 1)
    batches = list(quantize.calibration_batches((rows,)))
    seen = torch.cat([batch[0] for batch in batches]).flatten().tolist()
    assert len(seen) == 128 and seen[0] == 0 and seen[-1] > 290 and len(batches) == 16
    assert len(list(quantize.calibration_batches((rows[:76],)))) == 10  # all 76 archive photos


class OutlierNet(nn.Module):
    """A conv net with one quantization-hostile activation: `mix` outputs one channel 1000x
    the others, and `spread` reads only the small ones. Per-tensor uint8 on spread's input
    rounds them to zero; in fp32, spread sees them whole."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.mix = nn.Conv2d(8, 8, 1)
        self.spread = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
        with torch.no_grad():
            self.mix.weight[0] *= 1000.0
            self.mix.bias[0] = 5000.0
            self.spread[0].weight[:, 0] = 0.0  # the outlier channel carries no signal
            self.spread[0].bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.spread(torch.relu(self.mix(self.stem(x)))))


def cosine_judge(model: nn.Module, inputs: torch.Tensor, minimum: float) -> quantize.Judge:
    from torchserve_cpu.handlers.optimize.accuracy import compare
    from torchserve_cpu.handlers.settings import GateThresholds

    with torch.no_grad():
        reference = model(inputs)
    gate = GateThresholds(min_cosine=minimum, max_abs_diff=float("inf"), topk=1,
                          min_topk_agreement=0.0)

    def judge(output: torch.Tensor, index: torch.Tensor) -> tuple[bool, float, tuple[str, ...]]:
        agreement = compare(reference[index], output, gate)
        return agreement.passed, agreement.mean_cosine, agreement.failures

    return judge


def test_sensitivity_leaves_the_hurting_module_in_fp32() -> None:
    model, inputs = OutlierNet().eval(), real_images(16)
    assert quantize.quantization_units(model) == ["stem.0", "mix", "spread.0", "head.2"]
    plain = quantize.quantize_conv_net(model, (inputs,), 8)
    assert plain.fp32_modules == () and plain.sensitivity == ()
    result = quantize.quantize_conv_net(model, (inputs,), 8, cosine_judge(model, inputs, 0.995))
    assert result.passed and result.fp32_modules == ("spread.0",), result
    assert result.sensitivity[0][0] == "spread.0" and len(result.sensitivity) == 4
    assert "left in fp32: spread.0" in result.note()
    with torch.no_grad():
        quantized = result.module(inputs.contiguous(memory_format=torch.channels_last))
        fp32 = model(inputs)
    cosine = torch.nn.functional.cosine_similarity(quantized, fp32, dim=1)
    assert cosine.min() > 0.99


def test_sensitivity_gives_up_after_the_limit_and_says_so() -> None:
    model, inputs = OutlierNet().eval(), real_images(16)
    result = quantize.quantize_conv_net(model, (inputs,), 8, cosine_judge(model, inputs, 1.01),
                                        max_fp32_modules=2)
    # 4 modules: at most a quarter of them may stay fp32
    assert not result.passed and len(result.fp32_modules) == 1
    assert result.note().endswith("the q/dq model still fails the gate)")


def test_activation_bits_reach_the_quantizer() -> None:
    model, inputs = TinyConvNet().eval(), real_images(8)
    for bits, top in ((8, 255), (7, 127)):
        quantized, rows = quantize.quantize_pt2e(model, (inputs,), bits)
        maxima = {n.args[4] for n in quantized.graph.nodes
                  if n.target == torch.ops.quantized_decomposed.quantize_per_tensor.default}
        assert maxima == {top} and rows == 8
    with pytest.raises(ValueError, match="activation_bits"):
        quantize.quantize_pt2e(model, (inputs,), 6)


def test_int8_through_the_optimizer_reports_the_fp32_modules(
        caplog: pytest.LogCaptureFixture) -> None:
    settings = parse_settings({"dtype": "int8", "accuracy_gate": {"min_cosine": 0.995}})
    inputs = real_images(16)
    with caplog.at_level(logging.INFO, logger="torchserve_cpu.handlers.optimize.quantize"):
        chosen = optimize(OutlierNet(), (inputs[:1],), settings, NO_IPEX, classifies=True,
                          check=CheckInputs((inputs,), batch=1), activation_bits=7)
    assert chosen.plan == INT8_PLAN, chosen.rejected
    assert any("7-bit (reduce_range) activations" in note and "left in fp32: spread.0" in note
               for note in chosen.stage.notes), chosen.stage.notes
    assert "int8: left in fp32 after the sensitivity check: spread.0" in caplog.text
