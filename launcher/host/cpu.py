"""What this CPU can do, as plain data: its architecture, ISA flag names and model, and
which of those give native bf16 or int8 dot products. Facts only: which precision to serve
is the handler's decision (handlers.optimize.precision).

What oneDNN may use counts, not what the CPU has: `ONEDNN_MAX_CPU_ISA` (oneDNN's own cap,
set to pin kernels across a mixed node pool or to reproduce an older CPU) keeps oneDNN
from the units above it, so their flags are set aside here (`CpuFacts.hidden`) and a
bf16 served under `ONEDNN_MAX_CPU_ISA=AVX2` would be the emulated, 9x slower one."""

from __future__ import annotations

import functools
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass

from torchserve_cpu.launcher.host.sysroot import SysRoot

X86 = "x86_64"
ARM = "aarch64"

# x86 names are /proc/cpuinfo's `flags`, arm names its `Features`.
X86_BF16 = ("avx512_bf16", "amx_bf16")
X86_INT8_DOT = ("amx_int8", "avx512_vnni", "avx_vnni")
ARM_BF16 = ("bf16",)
ARM_INT8_DOT = ("i8mm", "asimddp")
# Without VNNI, x86 int8 GEMM multiplies u8 x s8 with VPMADDUBSW, which adds adjacent
# products into a saturating int16: 2 x 255 x 127 overflows it, 2 x 127 x 127 does not.
X86_INT8_SATURATING = ("avx2",)


@dataclass(frozen=True)
class CpuFacts:
    """What the decision needs to know about a CPU: architecture and its ISA flag names."""

    arch: str  # X86, ARM or whatever platform.machine() said (normalised by normal_arch)
    flags: frozenset[str]  # the ones oneDNN may use
    model: str = ""
    isa_cap: str = ""  # ONEDNN_MAX_CPU_ISA as set ("" when not)
    hidden: frozenset[str] = frozenset()  # the CPU's flags above that cap


#: oneDNN's x86 ISA levels (ONEDNN_MAX_CPU_ISA values, lowest first; aliases share a
#: level) and the lowest level each of our flags needs
ONEDNN_X86_LEVELS = {
    "SSE41": 1, "AVX": 2, "AVX2": 3, "AVX2_VNNI": 4, "AVX2_VNNI_2": 5, "AVX512_CORE": 6,
    "AVX512_CORE_VNNI": 7, "AVX512_CORE_BF16": 8, "AVX512_CORE_FP16": 9, "AVX10_1_512": 9,
    "AVX512_CORE_AMX": 10, "AVX10_1_512_AMX": 10, "AVX512_CORE_AMX_FP16": 11,
    "AVX10_1_512_AMX_FP16": 11, "AVX10_2_512": 12, "AVX10_2_512_AMX_2": 13, "ALL": 99,
}
X86_FLAG_LEVELS = {"avx2": 3, "avx_vnni": 4, "avx512f": 6, "avx512_vnni": 7,
                   "avx512_bf16": 8, "amx_bf16": 10, "amx_int8": 10, "amx_tile": 10}


@dataclass(frozen=True)
class Capabilities:
    """Native bf16 and fast int8 dot products, with the flags that provide them."""

    bf16_flags: tuple[str, ...]  # present flags that give native bf16 (empty: none)
    int8_dot_flags: tuple[str, ...]  # present flags with int8 dot products (VNNI/AMX/arm)
    int8_saturating: bool  # x86 AVX2 without VNNI: int8 only with 7-bit activations

    @property
    def native_bf16(self) -> bool:
        return bool(self.bf16_flags)

    @property
    def fast_int8(self) -> bool:
        return bool(self.int8_dot_flags)


def normal_arch(machine: str) -> str:
    """platform.machine() spelled one way: AMD64 (Windows) is x86_64, arm64 (macOS) aarch64."""
    lowered = machine.lower()
    if lowered in ("x86_64", "amd64", "x64"):
        return X86
    if lowered in ("aarch64", "arm64", "armv8l"):
        return ARM
    return lowered


def capabilities(facts: CpuFacts) -> Capabilities:
    if facts.arch == X86:
        bf16, dot, saturating = X86_BF16, X86_INT8_DOT, X86_INT8_SATURATING
    elif facts.arch == ARM:
        bf16, dot, saturating = ARM_BF16, ARM_INT8_DOT, ()
    else:
        bf16, dot, saturating = (), (), ()
    dot_present = tuple(f for f in dot if f in facts.flags)
    return Capabilities(
        bf16_flags=tuple(f for f in bf16 if f in facts.flags),
        int8_dot_flags=dot_present,
        int8_saturating=not dot_present and any(f in facts.flags for f in saturating),
    )


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(model name, ISA flags) from /proc/cpuinfo's text: x86 `flags`, arm `Features`."""
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "Hardware") and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return model, flags


def capped(facts: CpuFacts, isa_cap: str | None) -> CpuFacts:
    """`facts` with the flags above oneDNN's `isa_cap` set aside (x86; a value oneDNN does
    not know, or another architecture, sets nothing aside)."""
    level = ONEDNN_X86_LEVELS.get((isa_cap or "").strip().upper())
    if facts.arch != X86 or level is None:
        return facts
    hidden = frozenset(f for f in facts.flags if X86_FLAG_LEVELS.get(f, 0) > level)
    return CpuFacts(facts.arch, facts.flags - hidden, facts.model,
                    (isa_cap or "").strip().upper(), hidden)


def read_cpu_facts(sys_root: SysRoot | None = None, machine: str | None = None,
                   environ: Mapping[str, str] | None = None) -> CpuFacts:
    """This machine's facts (unreadable cpuinfo: no flags, so every decision is fp32), as
    oneDNN may use them under the environment's ONEDNN_MAX_CPU_ISA (or DNNL_MAX_CPU_ISA)."""
    environ = os.environ if environ is None else environ
    model, flags = parse_cpuinfo((sys_root or SysRoot()).read("proc/cpuinfo") or "")
    facts = CpuFacts(normal_arch(machine or platform.machine()), flags, model)
    return capped(facts, environ.get("ONEDNN_MAX_CPU_ISA") or environ.get("DNNL_MAX_CPU_ISA"))


@functools.cache
def this_cpu() -> CpuFacts:
    """This machine's facts, read once per process."""
    return read_cpu_facts()
