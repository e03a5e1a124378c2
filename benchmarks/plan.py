"""Which models at which load: model variants, the default load, named presets, quick mode."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent.parent / "model_store" / "samples"


@dataclass(frozen=True)
class ModelCase:
    """One model as served in a run: which archive to build, its batch, its request body."""

    name: str  # row label, e.g. resnet50-b8
    store_name: str  # model_store.build name, or "" for a ready archive
    batch_size: int
    input_file: Path
    content_type: str
    archive: Path | None = None  # a ready .mar (used as is, for every scenario)


@dataclass(frozen=True)
class Load:
    """benchmark-ab's knobs that are not about the model."""

    workers: int
    concurrency: int
    requests: int
    batch_delay_ms: int = 50


MODEL_CASES: dict[str, ModelCase] = {
    case.name: case
    for case in (
        ModelCase("resnet50", "resnet50", 1, SAMPLES / "shapes.jpg", "image/jpeg"),
        ModelCase("resnet50-b8", "resnet50", 8, SAMPLES / "shapes.jpg", "image/jpeg"),
        ModelCase("bert", "bert", 1, SAMPLES / "sentence.txt", "text/plain"),
        ModelCase("efficientnet_lite0", "efficientnet_lite0", 1, SAMPLES / "shapes.jpg",
                  "image/jpeg"),
    )
}


def cores() -> int:
    return len(os.sched_getaffinity(0))


#: Fits 2 cores: the issue's calibration load (2 workers, ab -c 8 -n 400).
DEFAULT_LOAD = Load(workers=2, concurrency=8, requests=400)
QUICK_LOAD = Load(workers=2, concurrency=4, requests=40)

#: The PyTorch/Intel tutorials' experiments.
PRESETS: dict[str, tuple[Load, int | None]] = {
    "tutorial-part1": (Load(workers=4, concurrency=100, requests=10000), None),
    "tutorial-part2": (Load(workers=4, concurrency=32, requests=8960), 32),
}


def load_for(case: ModelCase, load: Load) -> Load:
    """Enough clients to fill every worker's batch twice over, or batching never happens."""
    needed = 2 * load.workers * case.batch_size
    return replace(load, concurrency=max(load.concurrency, needed),
                   requests=max(load.requests, needed))


def select_models(names: Sequence[str] | None, batch_override: int | None) -> list[ModelCase]:
    """Model cases by name; a preset's batch size replaces each case's own (deduplicated)."""
    chosen = list(names or MODEL_CASES)
    unknown = [name for name in chosen if name not in MODEL_CASES]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from {', '.join(MODEL_CASES)}")
    cases = [MODEL_CASES[name] for name in chosen]
    if batch_override is None:
        return cases
    out: dict[str, ModelCase] = {}
    for case in cases:
        label = f"{case.store_name}-b{batch_override}" if batch_override > 1 else case.store_name
        out.setdefault(label, replace(case, name=label, batch_size=batch_override))
    return list(out.values())
