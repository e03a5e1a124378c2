import pytest
import torch

from torchserve_cpu.handlers.optimize.accuracy import FP32_THRESHOLDS, Agreement, compare
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
    from torchserve_cpu.handlers.optimize.optimizer import error_summary

    error = RuntimeError("The following operation failed in the TorchScript interpreter.\n"
                         "Traceback of TorchScript ...\n  frame\nRuntimeError: the real cause\n")
    summary = error_summary(error)
    assert summary.startswith("RuntimeError: The following operation failed")
    assert summary.endswith("RuntimeError: the real cause")
    assert error_summary(ValueError("one line")) == "ValueError: one line"


# Each threshold on its own: the other two are set so they cannot fail.
ANY_COSINE, ANY_DIFF, NO_TOPK = -2.0, float("inf"), 0.0


def gate(min_cosine: float = ANY_COSINE, max_abs_diff: float = ANY_DIFF, topk: int = 1,
         min_topk_agreement: float = NO_TOPK) -> GateThresholds:
    return GateThresholds(min_cosine=min_cosine, max_abs_diff=max_abs_diff, topk=topk,
                          min_topk_agreement=min_topk_agreement)


def test_cosine_threshold_alone() -> None:
    reference = torch.tensor([[0.010, 0.0, 0.0]])
    rotated = torch.tensor([[0.007, 0.007, 0.0]])  # cos 45 deg, tiny absolute differences
    result = compare(reference, rotated, gate(min_cosine=0.75))
    assert result.cosine == pytest.approx(2 ** -0.5, abs=1e-6)
    assert result.failures == (f"cosine {result.cosine:.6f} < 0.75",)
    assert compare(reference, rotated, gate(min_cosine=0.7)).passed
    assert compare(reference, rotated, gate(min_cosine=result.cosine)).passed  # at the limit
    assert not compare(reference, rotated, gate(min_cosine=result.cosine + 1e-6)).passed


def test_cosine_is_the_worst_sample_not_the_mean() -> None:
    reference = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    candidate = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # mean 0.67, worst 0
    result = compare(reference, candidate, gate(min_cosine=0.5))
    assert result.cosine == pytest.approx(0.0, abs=1e-6)
    assert result.failures == ("cosine 0.000000 < 0.5",)


def test_samples_are_compared_whole_whatever_their_shape() -> None:
    """(batch, tokens, dims) outputs are one vector per sample, not one per token."""
    reference = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    candidate = torch.tensor([[[1.0, 0.0], [0.0, -1.0]]])  # half the sample flipped
    assert compare(reference, candidate, gate()).cosine == pytest.approx(0.0, abs=1e-6)


def test_max_abs_diff_is_relative_to_the_largest_reference_magnitude() -> None:
    reference = torch.tensor([[-200.0, 3.0, 1.0]])  # largest magnitude 200, negative
    candidate = torch.tensor([[-200.0, 3.0, 11.0]])  # off by 10 = 5% of 200
    result = compare(reference, candidate, gate(max_abs_diff=0.06))
    assert result.passed and result.max_abs_diff == pytest.approx(0.05)
    assert compare(reference, candidate, gate(max_abs_diff=0.05)).passed  # at the limit
    failed = compare(reference, candidate, gate(max_abs_diff=0.04))
    assert failed.failures == ("max_abs_diff 5.00e-02 > 0.04",)


def test_max_abs_diff_of_small_outputs_is_absolute() -> None:
    """Below magnitude 1 the scale stays 1: tiny logits are not judged by tiny differences."""
    reference = torch.tensor([[0.5, 0.1], [0.2, -0.25]])
    candidate = torch.tensor([[0.5, 0.1], [0.2, -0.05]])  # off by 0.2
    result = compare(reference, candidate, gate(max_abs_diff=0.3))
    assert result.passed and result.max_abs_diff == pytest.approx(0.2)


def test_max_abs_diff_is_the_largest_over_all_samples() -> None:
    reference = torch.zeros(3, 4)
    candidate = torch.zeros(3, 4)
    candidate[0, 1], candidate[2, 3] = 0.1, -0.3
    assert compare(reference, candidate, gate()).max_abs_diff == pytest.approx(0.3)


def test_topk_agreement_is_the_mean_overlap_of_index_sets() -> None:
    reference = torch.tensor([[9.0, 8.0, 7.0, 1.0, 0.0],
                              [9.0, 8.0, 7.0, 1.0, 0.0]])
    candidate = torch.tensor([[7.0, 9.0, 8.0, 1.0, 0.0],   # same set, other order: 3/3
                              [9.0, 0.0, 1.0, 7.0, 8.0]])  # {0, 3, 4} vs {0, 1, 2}: 1/3
    result = compare(reference, candidate, gate(topk=3, min_topk_agreement=0.7))
    assert result.topk_agreement == pytest.approx(2 / 3)
    assert result.failures == ("top-3 agreement 0.67 < 0.7",)
    assert compare(reference, candidate, gate(topk=3, min_topk_agreement=2 / 3)).passed


def test_topk_larger_than_the_output_uses_all_of_it() -> None:
    reference = torch.tensor([[3.0, 2.0, 1.0]])
    result = compare(reference, torch.tensor([[1.0, 2.0, 3.0]]), gate(topk=5,
                                                                     min_topk_agreement=1.0))
    assert result.passed and result.topk_agreement == 1.0


def test_topk_applies_from_two_outputs_and_k_one() -> None:
    two = compare(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]),
                  gate(topk=1, min_topk_agreement=1.0))
    assert two.topk_agreement == 0.0 and two.failures == ("top-1 agreement 0.00 < 1.0",)
    single = compare(torch.tensor([[2.0], [1.0]]), torch.tensor([[-2.0], [1.0]]),
                     gate(topk=1, min_topk_agreement=1.0))
    assert single.topk_agreement == 1.0 and single.passed
    zero = compare(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]),
                   gate(topk=0, min_topk_agreement=1.0))
    assert zero.topk_agreement == 1.0 and zero.passed


def test_every_failing_threshold_is_reported_in_order() -> None:
    reference = torch.tensor([[5.0, 0.0, 0.0]])
    candidate = torch.tensor([[0.0, 0.0, 5.0]])
    result = compare(reference, candidate, gate(min_cosine=0.5, max_abs_diff=0.1,
                                                min_topk_agreement=1.0))
    assert result.failures == ("cosine 0.000000 < 0.5", "max_abs_diff 1.00e+00 > 0.1",
                               "top-1 agreement 0.00 < 1.0")
    assert not result.passed


def test_mismatches_are_reported_exactly() -> None:
    shape = compare(torch.ones(2, 3), torch.ones(2, 4), gate())
    assert shape == Agreement(0.0, float("inf"), 0.0, ("shape (2, 4) != (2, 3)",))
    for bad in (float("nan"), float("inf"), -float("inf")):
        candidate = torch.ones(2, 3)
        candidate[1, 2] = bad
        assert compare(torch.ones(2, 3), candidate, gate()) == \
            Agreement(0.0, float("inf"), 0.0, ("non-finite outputs",))


def test_bf16_outputs_are_compared_in_fp32() -> None:
    reference = torch.randn(2, 10, generator=torch.Generator().manual_seed(3))
    result = compare(reference, reference.bfloat16(), GateThresholds())
    assert result.passed and 0 < result.max_abs_diff < 0.01
    assert compare(reference, reference.clone().requires_grad_(), FP32_THRESHOLDS).passed


def test_tiny_outputs_that_agree_have_cosine_one() -> None:
    """Outputs near zero (norms below torch's default eps of 1e-8, which would clamp them
    and give cosine ~0) still compare by direction: identical ones agree, opposite ones do
    not."""
    reference = torch.tensor([[6e-11, 8e-11]])
    assert compare(reference, reference.clone(), gate(min_cosine=0.999)).cosine == \
        pytest.approx(1.0)
    assert compare(reference, -reference, gate()).cosine == pytest.approx(-1.0)
