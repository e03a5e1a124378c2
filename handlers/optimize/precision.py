"""Which precision a model is served in on this CPU, decided from its ISA flags alone.

Pure: `decide(requested, facts)` looks only at a `CpuFacts` record (launcher.host reads it,
once per process), so it answers in microseconds and builds nothing (a bf16 request on a
CPU without bf16 units is turned into fp32 before any model is converted), and every CPU of
the project is a unit test on a saved flag set (tests/data/capabilities/).
"""

from __future__ import annotations

from dataclasses import dataclass

from torchserve_cpu.launcher.host import (
    ARM,
    ARM_BF16,
    ARM_INT8_DOT,
    X86,
    X86_BF16,
    X86_INT8_DOT,
    X86_INT8_SATURATING,
    CpuFacts,
    capabilities,
)

DTYPES = ("fp32", "bf16", "int8", "auto")


@dataclass(frozen=True)
class Choice:
    """One precision to serve: the dtype, int8's activation width, and why."""

    dtype: str  # "fp32", "bf16" or "int8"
    reason: str
    activation_bits: int | None = None  # int8: 8 (0..255) or 7 (0..127); floats: None

    @property
    def reduce_range(self) -> bool:
        """True when int8 activations must stay in 0..127 (torch's `reduce_range=True`)."""
        return self.activation_bits == 7


@dataclass(frozen=True)
class Decision:
    """The answer to a requested dtype: the choices to try in order (one unless `auto`)."""

    requested: str
    candidates: tuple[Choice, ...]

    @property
    def served(self) -> Choice:
        return self.candidates[0]


def _wanted(names: tuple[str, ...]) -> str:
    return " or ".join(names) if names else "nothing known on this architecture"


def _capped(facts: CpuFacts, wanted: tuple[str, ...]) -> str:
    """Why a unit the CPU has is not counted: the oneDNN cap hides it ("" if none is)."""
    hidden = [name for name in wanted if name in facts.hidden]
    if not hidden:
        return ""
    return f"; it has {', '.join(hidden)}, but ONEDNN_MAX_CPU_ISA={facts.isa_cap} keeps " \
           "oneDNN from using them"


def _fp32(reason: str) -> Choice:
    return Choice("fp32", reason)


def bf16_choice(facts: CpuFacts) -> Choice:
    caps = capabilities(facts)
    if caps.native_bf16:
        return Choice("bf16", f"native bf16 ({', '.join(caps.bf16_flags)})")
    wanted = X86_BF16 if facts.arch == X86 else ARM_BF16 if facts.arch == ARM else ()
    return _fp32(f"bf16 requested, but this {facts.arch} CPU has no native bf16 "
                 f"(missing {_wanted(wanted)}{_capped(facts, wanted)}): serving fp32, "
                 "emulated bf16 is slower")


def int8_choice(facts: CpuFacts) -> Choice:
    caps = capabilities(facts)
    if caps.fast_int8:
        return Choice("int8", f"int8 dot products ({', '.join(caps.int8_dot_flags)}): "
                              "8-bit activations", activation_bits=8)
    if caps.int8_saturating:
        return Choice("int8", "no VNNI/AMX (missing avx512_vnni, avx_vnni, amx_int8"
                              f"{_capped(facts, X86_INT8_DOT)}): AVX2's "
                              "vpmaddubsw sums u8 x s8 pairs in saturating 16 bits, so "
                              "activations are kept in 0..127 (reduce_range)",
                      activation_bits=7)
    wanted = (*X86_INT8_DOT, *X86_INT8_SATURATING) if facts.arch == X86 else \
        ARM_INT8_DOT if facts.arch == ARM else ()
    return _fp32(f"int8 requested, but this {facts.arch} CPU has no int8 dot product "
                 f"(missing {_wanted(wanted)}): serving fp32")


def auto_candidates(facts: CpuFacts) -> tuple[Choice, ...]:
    """Fastest first: int8, then bf16 where native, then fp32 (always last, it needs no
    unit). The dot products beat fp32 FMA per cycle on every CPU here: fma_peak on the
    Sapphire-Rapids-class VM (2 vCPUs) measured AMX int8 5929 GOP/s > AMX bf16 3635 >
    AVX-512 FMA 210 GFLOP/s, and AVX2 int8 203 GOP/s > AVX2 FMA 108 even with the 7-bit
    activations a Zen 3 needs. Meant to be tried in order, an accuracy gate refusing one."""
    found = [choice for choice in (int8_choice(facts), bf16_choice(facts))
             if choice.dtype != "fp32"]
    return (*found, _fp32("the reference precision, needs no special unit"))


def decide(requested: str, facts: CpuFacts) -> Decision:
    """What to serve for `requested` (fp32, bf16, int8 or auto) on a CPU with `facts`."""
    if requested == "fp32":
        return Decision(requested, (_fp32("requested"),))
    if requested == "bf16":
        return Decision(requested, (bf16_choice(facts),))
    if requested == "int8":
        return Decision(requested, (int8_choice(facts),))
    if requested == "auto":
        return Decision(requested, auto_candidates(facts))
    raise ValueError(f"dtype {requested!r}: expected one of {', '.join(DTYPES)}")
