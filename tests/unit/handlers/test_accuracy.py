import pytest
import torch

from torchserve_cpu.handlers.optimize.accuracy import (
    CLASSIFIER_GATE,
    FP32_THRESHOLDS,
    Agreement,
    compare,
)
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


# The classifier gate: the three rows of the precision study (EfficientNet-Lite0 on the 304
# photos, benchmarks/results/precision/), reproduced as logits with the same shape of
# disagreement: 137 of 304 inputs where fp32 is confident, the rest near-ties, and each
# candidate at exactly the per-row cosines given.
CONFIDENT, INPUTS, CLASSES = 137, 304, 1000


def reference_logits() -> torch.Tensor:
    """fp32 logits: a clear winner on the first CONFIDENT rows, two near-tied leaders on
    the others (fp32's top-1 minus top-2 probability well under 0.1)."""
    generator = torch.Generator().manual_seed(7)
    logits = 0.3 * torch.randn(INPUTS, CLASSES, generator=generator)
    rows = torch.arange(INPUTS)
    logits[rows, rows % CLASSES] += torch.where(rows < CONFIDENT, 12.0, 3.0)
    logits[rows, (rows + 1) % CLASSES] += torch.where(rows < CONFIDENT, 0.0, 2.95)
    return logits


def at_cosines(reference: torch.Tensor, cosines: torch.Tensor, seed: int) -> torch.Tensor:
    """Each row of `reference` turned away from itself to exactly cosines[row]."""
    noise = torch.randn(reference.shape, generator=torch.Generator().manual_seed(seed))
    unit = reference / reference.norm(dim=1, keepdim=True)
    away = noise - (noise * unit).sum(1, keepdim=True) * unit
    away = away / away.norm(dim=1, keepdim=True)
    sines = (1 - cosines ** 2).sqrt()[:, None]
    return reference.norm(dim=1, keepdim=True) * (cosines[:, None] * unit + sines * away)


def row_cosines(bulk: float, worst: float, spread: int) -> torch.Tensor:
    """`bulk` for most rows, `spread` rows from `worst` up to `bulk` (the worst first)."""
    cosines = torch.full((INPUTS,), bulk)
    cosines[-spread:] = torch.linspace(worst, bulk, spread)
    return cosines


def test_classifier_figures_count_only_the_confident_inputs() -> None:
    reference = torch.tensor([[9.0, 0.0, 0.0], [1.0, 0.99, 0.0], [0.0, 8.0, 0.0]])
    candidate = torch.tensor([[0.0, 9.0, 0.0], [0.0, 1.0, 0.0], [0.0, 8.0, 0.0]])
    result = compare(reference, candidate, CLASSIFIER_GATE)
    assert result.confident_inputs == 2 and result.confident_agreement == 0.5
    assert result.top1_in_top5 == 1.0  # 3 classes: every class is in the top 5
    assert "top-1 agreement 0.500 on the 2 confident inputs < 0.95" in result.failures
    assert compare(reference, candidate, gate()).passed  # off at GateThresholds' defaults


def test_top1_in_top5_and_mean_cosine() -> None:
    reference = torch.arange(8.0).repeat(4, 1)  # top-1: class 7
    candidate = reference.clone()
    candidate[0, 7] = -1.0  # class 7 falls out of row 0's top 5
    result = compare(reference, candidate, GateThresholds(
        min_cosine=ANY_COSINE, max_abs_diff=ANY_DIFF, topk=1, min_topk_agreement=NO_TOPK,
        min_mean_cosine=0.99, min_top1_in_top5=0.8))
    assert result.top1_in_top5 == 0.75
    assert result.mean_cosine == pytest.approx(float(torch.nn.functional.cosine_similarity(
        reference, candidate, dim=1).mean()))
    assert result.failures[0].startswith("mean cosine ")
    assert result.failures[-1] == "fp32 top-1 in top-5 0.750 < 0.8"


@pytest.mark.parametrize(("row", "cosines", "passes"), [
    # bf16 autocast: cosine 0.985 worst, 0.998 mean on a Zen 3
    ("bf16", row_cosines(0.9988, 0.985, 8), True),
    # PT2E int8, q/dq reference: 0.89 worst, 0.975 mean
    ("int8 reference", row_cosines(0.977, 0.89, 12), True),
    # the same lowered on AVX2 kernels with 8-bit activations (saturated): 0.60 / 0.943
    ("int8 saturated", row_cosines(0.95, 0.60, 12), False),
])
def test_the_classifier_gate_on_the_three_rows(row: str, cosines: torch.Tensor,
                                               passes: bool) -> None:
    reference = reference_logits()
    result = compare(reference, at_cosines(reference, cosines, seed=len(row)), CLASSIFIER_GATE)
    assert result.confident_inputs == CONFIDENT
    assert result.cosine == pytest.approx(float(cosines.min()), abs=1e-4)
    assert result.mean_cosine == pytest.approx(float(cosines.mean()), abs=1e-4)
    assert result.passed == passes, (row, result)
    if not passes:  # the cosines refuse it, worst and mean
        assert result.failures[:2] == ("cosine 0.600000 < 0.8",
                                       f"mean cosine {result.mean_cosine:.6f} < 0.96")


def test_all_agreement_over_every_input_is_not_required() -> None:
    """bf16's top-1 differs from fp32 on near-ties (the Zen 3 saw 96.1% over all photos):
    the gate does not count them."""
    reference = reference_logits()
    candidate = reference.clone()
    near_ties = torch.arange(CONFIDENT, INPUTS)[:12]  # 4% of the inputs swap their leaders
    first, second = reference[near_ties].topk(2, dim=1).indices.T
    candidate[near_ties, first] = reference[near_ties, second]
    candidate[near_ties, second] = reference[near_ties, first]
    assert (candidate.argmax(1) != reference.argmax(1)).sum() == 12
    assert compare(reference, candidate, CLASSIFIER_GATE).passed
