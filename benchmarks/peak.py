"""The machine's multiply-add roof on the cores the server uses, per dtype.

Probes, best one per dtype wins and is named: torch.mm (MKL/oneDNN GEMM) and a 1x1
convolution used as a GEMM (oneDNN's conv kernels; beat MKL's sgemm on an AMD CPU), fp32 and
bf16; and register-only loops of each multiply-add instruction family the CPU has (AVX2 FMA,
AVX-512 FMA, VDPBF16PS, VFMADD231PH, VPDPBUSD, AMX tiles, NEON/SVE), compiled with gcc at run
time, one binary per kernel, only for the kernels whose flags /proc/cpuinfo shows (the true
issue rate; an AVX-512-only probe died with SIGILL on a Zen 3). Measured on a Zen 4 (2
cores): mm 188/394, conv1x1 209/428, AVX-512 FMA/VDPBF16PS loop 225/467 GFLOP/s (fp32/bf16).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from torchserve_cpu.launcher.host import ARM, X86, CpuFacts, read_cpu_facts

FMA_SOURCE = Path(__file__).resolve().parent / "native" / "fma_peak.c"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PEAK_DTYPES = ("fp32", "bf16", "fp16", "int8")  # the order of the summary's columns


@dataclass(frozen=True)
class Peak:
    """GFLOP/s per probe and dtype; `best` picks the highest and says which probe it was."""

    gflops: dict[str, dict[str, float]]  # probe -> dtype -> GFLOP/s (int8: GOP/s)
    skipped: dict[str, str] = field(default_factory=dict)  # native kernel -> why it did not run

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


@dataclass(frozen=True)
class Kernel:
    """One register-only multiply-add loop of fma_peak.c and what it needs to run."""

    name: str  # also its macro: PEAK_<NAME with - as _>
    dtype: str  # what its limit is used for: fp32, bf16, fp16 or int8 (GOP/s)
    arch: str  # precision.X86 or precision.ARM
    needs: tuple[str, ...]  # /proc/cpuinfo flags (x86) or Features (arm), all required
    cflags: tuple[str, ...]
    instruction: str

    @property
    def macro(self) -> str:
        return "PEAK_" + self.name.upper().replace("-", "_")


NATIVE_KERNELS = (
    Kernel("avx2-fma", "fp32", X86, ("avx2", "fma"), ("-mavx2", "-mfma"), "VFMADD231PS ymm"),
    Kernel("avx512-fma", "fp32", X86, ("avx512f",), ("-mavx512f",), "VFMADD231PS zmm"),
    Kernel("avx512-bf16", "bf16", X86, ("avx512f", "avx512_bf16"),
           ("-mavx512f", "-mavx512bf16"), "VDPBF16PS zmm"),
    Kernel("amx-bf16", "bf16", X86, ("amx_tile", "amx_bf16"), ("-mamx-tile", "-mamx-bf16"),
           "TDPBF16PS"),
    Kernel("avx512-fp16", "fp16", X86, ("avx512_fp16",), ("-mavx512fp16",), "VFMADD231PH zmm"),
    Kernel("avx2-int8", "int8", X86, ("avx2",), ("-mavx2",), "VPMADDUBSW+VPMADDWD ymm"),
    Kernel("avx-vnni", "int8", X86, ("avx_vnni",), ("-mavxvnni",), "VPDPBUSD ymm"),
    Kernel("avx512-vnni", "int8", X86, ("avx512f", "avx512_vnni"),
           ("-mavx512f", "-mavx512vnni"), "VPDPBUSD zmm"),
    Kernel("amx-int8", "int8", X86, ("amx_tile", "amx_int8"), ("-mamx-tile", "-mamx-int8"),
           "TDPBUSD"),
    Kernel("neon-fma", "fp32", ARM, ("asimd",), (), "FMLA v.4s"),
    Kernel("sve-fma", "fp32", ARM, ("sve",), ("-march=armv8.2-a+sve",), "FMLA z.s"),
    Kernel("neon-bf16", "bf16", ARM, ("bf16",), ("-march=armv8.2-a+bf16",), "BFMMLA"),
    Kernel("neon-dotprod", "int8", ARM, ("asimddp",), ("-march=armv8.2-a+dotprod",), "SDOT"),
    Kernel("neon-i8mm", "int8", ARM, ("i8mm",), ("-march=armv8.2-a+i8mm",), "SMMLA"),
)


@dataclass(frozen=True)
class KernelChoice:
    kernel: Kernel
    missing: tuple[str, ...]  # the needed flags this CPU lacks; empty: it runs

    @property
    def runs(self) -> bool:
        return not self.missing

    @property
    def note(self) -> str:
        return "runs" if self.runs else f"not on this CPU (no {', '.join(self.missing)})"


def select_kernels(facts: CpuFacts) -> tuple[KernelChoice, ...]:
    """Every kernel of this architecture, each run only if the CPU has all it needs: a
    binary with an instruction the CPU lacks dies with SIGILL (AVX-512 on a Zen 3)."""
    return tuple(
        KernelChoice(k, tuple(flag for flag in k.needs if flag not in facts.flags))
        for k in NATIVE_KERNELS if k.arch == facts.arch
    )


def kernel_binary(kernel: Kernel, cache_dir: Path | None = None,
                  compiler: str = "gcc") -> Path | None:
    """`kernel` compiled (cached by source, compiler and flags); None without the compiler.
    Raises CalledProcessError when it cannot build it (a gcc too old for its -m flags)."""
    if shutil.which(compiler) is None:
        return None
    command = [compiler, "-O3", "-funroll-loops", *kernel.cflags, f"-D{kernel.macro}", "-fopenmp",
               str(FMA_SOURCE)]
    digest = hashlib.sha256(FMA_SOURCE.read_bytes() + " ".join(command).encode()).hexdigest()
    cache = cache_dir or Path(tempfile.gettempdir()) / "torchserve-cpu-bench"
    cache.mkdir(parents=True, exist_ok=True)
    binary = cache / f"fma_peak-{kernel.name}-{digest[:12]}"
    if not binary.exists():
        partial = binary.with_suffix(f".partial{os.getpid()}")
        subprocess.run([*command, "-o", str(partial)], check=True, capture_output=True)
        partial.rename(binary)
    return binary


def run_kernel(kernel: Kernel, threads: int, iterations: int) -> float | str:
    """G(FL)OP/s of one kernel on `threads` OpenMP threads, or why it did not run."""
    try:
        binary = kernel_binary(kernel)
    except subprocess.CalledProcessError as error:
        return f"not built ({error.stderr.decode(errors='replace').strip()[-200:]})"
    if binary is None:
        return "not built (no gcc)"
    done = subprocess.run(
        [str(binary), str(iterations)], capture_output=True, text=True,
        env={"OMP_NUM_THREADS": str(threads), "OMP_PROC_BIND": "spread", "PATH": "/usr/bin"},
    )
    if done.returncode != 0:
        return f"failed (exit {done.returncode}: {done.stderr.strip()[-200:]})"
    return float(done.stdout.split()[0])


def native_peaks(threads: int, iterations: int, facts: CpuFacts | None = None
                 ) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """(kernel -> {dtype: G(FL)OP/s} for the kernels that ran, kernel -> why not for the
    rest). Only kernels whose flags the CPU reports are compiled and run."""
    measured: dict[str, dict[str, float]] = {}
    skipped: dict[str, str] = {}
    for choice in select_kernels(facts or read_cpu_facts()):
        kernel = choice.kernel
        result = run_kernel(kernel, threads, iterations) if choice.runs else choice.note
        if isinstance(result, float):
            measured[kernel.name] = {kernel.dtype: result}
        else:
            skipped[kernel.name] = result
    return measured, skipped


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
    native, skipped = native_peaks(threads, 10_000_000 if quick else 40_000_000)
    return Peak({**gflops, **native}, skipped)


def kernel_lines(threads: int, iterations: int = 10_000_000) -> list[str]:
    """One line per native kernel of this architecture: its rate, or why it did not run."""
    measured, skipped = native_peaks(threads, iterations)
    lines = []
    for kernel in NATIVE_KERNELS:
        if kernel.name in measured:
            unit = "GOP/s" if kernel.dtype == "int8" else "GFLOP/s"
            result = f"{measured[kernel.name][kernel.dtype]:.1f} {unit}"
        elif kernel.name in skipped:
            result = skipped[kernel.name]
        else:
            continue  # another architecture's
        lines.append(f"{kernel.name:13} {kernel.dtype:5} {kernel.instruction:24} {result}")
    return lines


if __name__ == "__main__":  # python -m benchmarks.peak [threads]: the native kernels only
    import sys

    print("\n".join(kernel_lines(int(sys.argv[1]) if len(sys.argv) > 1 else os.cpu_count() or 1)))
