"""What the served model could do without serving: FLOPs per item and a raw in-process loop.

The model is built from the very archive the server ran by the handler's own
`build_served_model` (optimized as our handler serves it, or eager as the stock baseline does),
and fed the benchmark's own request body decoded by the model's task: served / raw then
measures serving overhead and nothing else.
"""

from __future__ import annotations

import json
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from torchserve_cpu.handlers.loading import load_model
from torchserve_cpu.handlers.served_model import build_served_model
from torchserve_cpu.handlers.tasks import ModelInputs


@dataclass(frozen=True)
class Reference:
    """Raw loop result of one archive (one model at one batch, as its handler would run it)."""

    raw_items_per_s: float
    flops_per_item: float
    dtype: str
    pipeline: str


def _unpack(archive: Path, dest: Path) -> tuple[dict, dict]:
    with zipfile.ZipFile(archive) as mar:
        mar.extractall(dest)
    manifest = json.loads((dest / "MAR-INF" / "MANIFEST.json").read_text())
    config_name = manifest.get("model", {}).get("configFile")
    config = yaml.safe_load((dest / config_name).read_text()) if config_name else {}
    return manifest, config or {}


def count_flops(fn: Callable[..., object], inputs: ModelInputs) -> int:
    """Multiply-adds x 2 of one call, from torch's FLOP counter (eager graph)."""
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        fn(*inputs)
    return int(counter.get_total_flops())


def raw_items_per_s(fn: Callable[..., object], inputs: ModelInputs, batch: int,
                    seconds: float, windows: int = 5) -> float:
    """Items/s of back-to-back calls: the best of `windows` windows over about `seconds`,
    after at least a second of warm-up. Best, not mean: on a shared machine other work
    only ever slows a window down, and this line is what the model *can* do."""
    with torch.inference_mode():
        warm_until = time.perf_counter() + 1.0
        calls = 0
        while calls < 3 or time.perf_counter() < warm_until:
            fn(*inputs)
            calls += 1
        best = 0.0
        for _ in range(windows):
            calls, start = 0, time.perf_counter()
            while True:
                fn(*inputs)
                calls += 1
                elapsed = time.perf_counter() - start
                if elapsed >= seconds / windows:
                    break
            best = max(best, calls * batch / elapsed)
        return best


def measure_reference(
    archive: Path, body: bytes, content_type: str, batch: int, threads: int,
    optimized: bool, seconds: float = 10.0,
) -> Reference:
    """Raw-loop throughput and FLOPs per item of the model inside `archive`.

    `optimized` builds the model as our handler does (the archive's settings); otherwise as the
    stock handler does (eager fp32). FLOPs are counted on the eager model in both cases."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp)
            manifest, config = _unpack(archive, model_dir)
            served = build_served_model(model_dir, manifest, config.get("handler"),
                                        optimized=optimized)
            sample = served.task.decode(body, content_type)
            flops = count_flops(load_model(model_dir, manifest), served.task.collate([sample]))
            rate = raw_items_per_s(served, served.task.collate([sample] * batch), batch, seconds)
    finally:
        torch.set_num_threads(previous)
    return Reference(rate, float(flops), served.model.dtype, served.model.plan.describe())
