"""Which native peak kernels run, chosen from the saved CPUs' flags (nothing is executed)."""

from __future__ import annotations

import pytest

from benchmarks import peak
from benchmarks.driver import peak_lines
from benchmarks.peak import NATIVE_KERNELS, Peak, native_peaks, select_kernels
from tests.support.capabilities import NAMES, saved_facts

X86_KERNELS = ["avx2-fma", "avx512-fma", "avx512-bf16", "amx-bf16", "avx512-fp16", "avx2-int8",
               "avx-vnni", "avx512-vnni", "amx-int8"]


def running(name: str) -> list[str]:
    return [c.kernel.name for c in select_kernels(saved_facts(name)) if c.runs]


@pytest.mark.parametrize(("name", "expected"), [
    ("zen3", ["avx2-fma", "avx2-int8"]),
    ("zen4", ["avx2-fma", "avx512-fma", "avx512-bf16", "avx2-int8", "avx512-vnni"]),
    ("sapphire_rapids", X86_KERNELS),
    ("graviton3", ["neon-fma", "sve-fma", "neon-bf16", "neon-dotprod", "neon-i8mm"]),
])
def test_kernels_run_only_where_the_cpu_has_their_flags(name: str, expected: list) -> None:
    assert running(name) == expected


@pytest.mark.parametrize("name", NAMES)
def test_only_this_architecture_s_kernels_are_listed(name: str) -> None:
    facts = saved_facts(name)
    assert {c.kernel.arch for c in select_kernels(facts)} == {facts.arch}


def test_a_zen3_is_told_why_avx512_is_not_run() -> None:
    notes = {c.kernel.name: c.note for c in select_kernels(saved_facts("zen3"))}
    assert notes["avx512-bf16"] == "not on this CPU (no avx512f, avx512_bf16)"
    assert notes["amx-int8"] == "not on this CPU (no amx_tile, amx_int8)"
    assert notes["avx2-fma"] == "runs"


def test_kernels_the_cpu_lacks_are_neither_built_nor_run(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(peak, "run_kernel", lambda k, t, i: calls.append(k.name) or 10.0)
    measured, skipped = native_peaks(2, 1000, saved_facts("zen3"))
    assert calls == ["avx2-fma", "avx2-int8"]
    assert measured == {"avx2-fma": {"fp32": 10.0}, "avx2-int8": {"int8": 10.0}}
    assert set(skipped) == set(X86_KERNELS) - set(calls)


def test_every_kernel_has_its_own_macro_and_a_known_dtype() -> None:
    assert len({k.macro for k in NATIVE_KERNELS}) == len(NATIVE_KERNELS)
    assert {k.dtype for k in NATIVE_KERNELS} <= set(peak.PEAK_DTYPES)


def test_summary_lines_show_int8_and_the_kernels_not_run() -> None:
    result = Peak({"torch.mm": {"fp32": 90.0, "bf16": 500.0}, "avx2-fma": {"fp32": 70.0},
                   "avx512-vnni": {"int8": 550.0}},
                  {"amx-int8": "not on this CPU (no amx_tile, amx_int8)"})
    assert result.best("int8") == (550.0, "avx512-vnni")
    text = "\n".join(peak_lines(result, 2))
    assert "| probe | fp32 | bf16 | int8 |" in text
    assert "| avx512-vnni |  |  | 550 |" in text
    assert "amx-int8: not on this CPU (no amx_tile, amx_int8)" in text
    assert "Used as the int8 limit: 550 G(FL)OP/s (avx512-vnni)." in text
