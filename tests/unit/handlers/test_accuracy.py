import torch

from torchserve_cpu.handlers.accuracy import FP32_THRESHOLDS, compare
from torchserve_cpu.handlers.settings import GateThresholds


def test_identical_outputs_pass() -> None:
    reference = torch.randn(4, 10)
    result = compare(reference, reference.clone(), FP32_THRESHOLDS)
    assert result.passed
    assert result.cosine > 0.99999 and result.max_abs_diff == 0.0 and result.topk_agreement == 1


def test_noise_fails_fp32_but_passes_loose_gate() -> None:
    generator = torch.Generator().manual_seed(1)
    reference = torch.randn(4, 1000, generator=generator) * 5
    noisy = reference + 0.01 * torch.randn(4, 1000, generator=generator)
    assert not compare(reference, noisy, FP32_THRESHOLDS).passed
    assert compare(reference, noisy, GateThresholds()).passed


def test_topk_disagreement_is_reported() -> None:
    reference = torch.tensor([[5.0, 4.0, 3.0, 0.0, 0.0, 0.0]])
    shuffled = torch.tensor([[0.0, 0.0, 0.0, 5.0, 4.0, 3.0]])
    result = compare(reference, shuffled, GateThresholds(min_cosine=-1, max_abs_diff=10,
                                                         topk=3, min_topk_agreement=0.5))
    assert result.topk_agreement == 0.0
    assert any("top-3 agreement" in failure for failure in result.failures)


def test_non_finite_and_shape_mismatch_fail() -> None:
    reference = torch.ones(2, 3)
    assert not compare(reference, torch.full((2, 3), float("nan")), FP32_THRESHOLDS).passed
    assert not compare(reference, torch.ones(2, 4), FP32_THRESHOLDS).passed


def test_error_summary_keeps_both_ends_of_torchscript_errors() -> None:
    from torchserve_cpu.handlers.optimizer import error_summary

    error = RuntimeError("The following operation failed in the TorchScript interpreter.\n"
                         "Traceback of TorchScript ...\n  frame\nRuntimeError: the real cause\n")
    summary = error_summary(error)
    assert summary.startswith("RuntimeError: The following operation failed")
    assert summary.endswith("RuntimeError: the real cause")
    assert error_summary(ValueError("one line")) == "ValueError: one line"
