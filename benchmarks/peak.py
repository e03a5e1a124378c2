"""The machine's multiply-add roof on the cores the server uses, fp32 and bf16.

Three probes, best one wins and is named: torch.mm (MKL/oneDNN GEMM), a 1x1 convolution used
as a GEMM (oneDNN's conv kernels; beat MKL's sgemm on this AMD CPU), and a register-only AVX-512
FMA / VDPBF16PS loop compiled with gcc at run time (the true issue rate). The issue measured
on this machine: mm 188/394, conv1x1 209/428, FMA loop 225/467 GFLOP/s (fp32/bf16, 2 cores).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

FMA_SOURCE = Path(__file__).resolve().parent / "native" / "fma_peak.c"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Peak:
    """GFLOP/s per probe and dtype; `best` picks the highest and says which probe it was."""

    gflops: dict[str, dict[str, float]]  # probe -> dtype -> GFLOP/s

    def best(self, dtype: str) -> tuple[float, str]:
        candidates = [(v[dtype], probe) for probe, v in self.gflops.items() if dtype in v]
        return max(candidates) if candidates else (float("nan"), "none")


def _rate(fn: Callable[[], object], flops: float, seconds: float) -> float:
    """Best GFLOP/s over repeated calls for about `seconds` (after one warm-up call)."""
    fn()
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        best = max(best, flops / (time.perf_counter() - start) / 1e9)
    return best


def mm_gflops(dtype: torch.dtype, n: int = 4096, seconds: float = 2.0) -> float:
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    return _rate(lambda: torch.mm(a, b), 2.0 * n**3, seconds)


def conv1x1_gflops(dtype: torch.dtype, channels: int = 2048, side: int = 32,
                   seconds: float = 2.0) -> float:
    conv = torch.nn.Conv2d(channels, channels, 1, bias=False).to(dtype).eval()
    x = torch.randn(1, channels, side, side).to(dtype).contiguous(
        memory_format=torch.channels_last)
    conv = conv.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        return _rate(lambda: conv(x), 2.0 * channels * channels * side * side, seconds)


def fma_binary(cache_dir: Path | None = None) -> Path | None:
    """The FMA probe compiled for this CPU (cached by source hash); None without gcc."""
    if shutil.which("gcc") is None:
        return None
    source = FMA_SOURCE.read_bytes()
    cache = cache_dir or Path(tempfile.gettempdir()) / "torchserve-cpu-bench"
    cache.mkdir(parents=True, exist_ok=True)
    binary = cache / f"fma_peak-{hashlib.sha256(source).hexdigest()[:12]}"
    if not binary.exists():
        partial = binary.with_suffix(".partial")
        subprocess.run(
            ["gcc", "-O3", "-funroll-loops", "-mavx512f", "-mavx512bf16", "-fopenmp",
             str(FMA_SOURCE), "-o", str(partial)],
            check=True, capture_output=True,
        )
        partial.rename(binary)
    return binary


def fma_gflops(threads: int, iterations: int = 40_000_000) -> dict[str, float]:
    """fp32 and bf16 GFLOP/s of the FMA loop on `threads` OpenMP threads ({} if unavailable)."""
    try:
        binary = fma_binary()
    except subprocess.CalledProcessError:  # a compiler without AVX-512 BF16 support
        return {}
    if binary is None:
        return {}
    out = subprocess.run(
        [str(binary), str(iterations)], capture_output=True, text=True, check=True,
        env={"OMP_NUM_THREADS": str(threads), "OMP_PROC_BIND": "spread", "PATH": "/usr/bin"},
    ).stdout.split()
    return {"fp32": float(out[0]), "bf16": float(out[1])}


def measure_peak(threads: int, quick: bool = False) -> Peak:
    """All three probes with `threads` threads; quick mode uses smaller, shorter probes."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    seconds = 0.5 if quick else 2.0
    n, channels = (2048, 1024) if quick else (4096, 2048)
    try:
        gflops = {
            "torch.mm": {name: mm_gflops(dt, n, seconds) for name, dt in DTYPES.items()},
            "conv1x1": {
                name: conv1x1_gflops(dt, channels, seconds=seconds) for name, dt in DTYPES.items()
            },
        }
    finally:
        torch.set_num_threads(previous)
    fma = fma_gflops(threads, 10_000_000 if quick else 40_000_000)
    if fma:
        gflops["avx512-fma-loop"] = fma
    return Peak(gflops)
