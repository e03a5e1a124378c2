"""Compare an optimized model's outputs with fp32 eager on the same inputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from torchserve_cpu.handlers.settings import GateThresholds

# An fp32 backend only reorders arithmetic (folded BN, fused ops): it must agree closely.
FP32_THRESHOLDS = GateThresholds(min_cosine=0.9999, max_abs_diff=1e-3, topk=1,
                                 min_topk_agreement=1.0)


@dataclass(frozen=True)
class Agreement:
    cosine: float  # worst per-sample cosine similarity
    max_abs_diff: float  # relative to max(1, largest reference magnitude)
    topk_agreement: float  # mean overlap of the top-k index sets, 1.0 when k does not apply
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures


def compare(reference: torch.Tensor, candidate: torch.Tensor,
            thresholds: GateThresholds) -> Agreement:
    """How `candidate` agrees with `reference` (batch-first), and which thresholds fail."""
    ref = reference.detach().float().reshape(reference.shape[0], -1)
    out = candidate.detach().float().reshape(candidate.shape[0], -1)
    if ref.shape != out.shape:
        mismatch = f"shape {tuple(out.shape)} != {tuple(ref.shape)}"
        return Agreement(0.0, float("inf"), 0.0, (mismatch,))
    if not torch.isfinite(out).all():
        return Agreement(0.0, float("inf"), 0.0, ("non-finite outputs",))
    cosine = float(torch.nn.functional.cosine_similarity(ref, out, dim=1, eps=1e-12).min())
    scale = max(1.0, float(ref.abs().max()))
    max_abs = float((ref - out).abs().max()) / scale
    k = min(thresholds.topk, ref.shape[1])
    agreement = 1.0
    if ref.shape[1] > 1 and k >= 1:
        ref_top = ref.topk(k, dim=1).indices
        out_top = out.topk(k, dim=1).indices
        overlaps = [len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(ref_top, out_top)]
        agreement = sum(overlaps) / len(overlaps)
    failures = []
    if cosine < thresholds.min_cosine:
        failures.append(f"cosine {cosine:.6f} < {thresholds.min_cosine}")
    if max_abs > thresholds.max_abs_diff:
        failures.append(f"max_abs_diff {max_abs:.2e} > {thresholds.max_abs_diff}")
    if agreement < thresholds.min_topk_agreement:
        failures.append(f"top-{k} agreement {agreement:.2f} < {thresholds.min_topk_agreement}")
    return Agreement(cosine, max_abs, agreement, tuple(failures))
