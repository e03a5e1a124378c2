"""The precision decision on the saved CPUs: Zen 3, Zen 4, Sapphire Rapids, Graviton 3."""

from __future__ import annotations

import ast
import sys
import time
from pathlib import Path

import pytest

from tests.support.capabilities import NAMES, capability_set, saved_facts
from torchserve_cpu.handlers.optimize import precision
from torchserve_cpu.handlers.optimize.precision import decide
from torchserve_cpu.launcher.host import (
    ARM,
    X86,
    CpuFacts,
    SysRoot,
    capabilities,
    normal_arch,
    parse_cpuinfo,
    read_cpu_facts,
)


def served(name: str, requested: str) -> list[tuple[str, int | None]]:
    return [(c.dtype, c.activation_bits) for c in decide(requested, saved_facts(name)).candidates]


@pytest.mark.parametrize(("name", "bf16", "int8"), [
    ("zen3", (), ()),
    ("zen4", ("avx512_bf16",), ("avx512_vnni",)),
    ("zen5", ("avx512_bf16",), ("avx512_vnni", "avx_vnni")),
    ("sapphire_rapids", ("avx512_bf16", "amx_bf16"), ("amx_int8", "avx512_vnni", "avx_vnni")),
    ("graviton3", ("bf16",), ("i8mm", "asimddp")),
])
def test_capabilities_name_the_flags_that_give_them(name: str, bf16: tuple, int8: tuple) -> None:
    caps = capabilities(saved_facts(name))
    assert (caps.bf16_flags, caps.int8_dot_flags) == (bf16, int8)
    assert caps.native_bf16 == bool(bf16) and caps.fast_int8 == bool(int8)
    assert caps.int8_saturating == (name == "zen3")


@pytest.mark.parametrize("name", NAMES)
def test_capabilities_agree_with_what_torch_reports_there(name: str) -> None:
    """The cpuinfo flags and torch's own mapping of each saved set tell the same story."""
    torch_caps = capability_set(name)["torch_capabilities"]
    caps = capabilities(saved_facts(name))
    if torch_caps["architecture"] == "x86_64":
        assert caps.native_bf16 == (torch_caps["avx512_bf16"] or torch_caps["amx_bf16"])
        assert caps.fast_int8 == (torch_caps["avx512_vnni"] or torch_caps["avx_vnni"]
                                  or torch_caps["amx_int8"])
    else:
        assert torch_caps["architecture"] == "arm64"
        assert caps.native_bf16 == torch_caps["bf16"]
        assert caps.fast_int8 == (torch_caps["i8mm"] or torch_caps["dot"])


@pytest.mark.parametrize(("name", "requested", "expected"), [
    ("zen3", "fp32", [("fp32", None)]),
    ("zen3", "bf16", [("fp32", None)]),
    ("zen3", "int8", [("int8", 7)]),
    ("zen3", "auto", [("int8", 7), ("fp32", None)]),
    ("zen4", "bf16", [("bf16", None)]),
    ("zen4", "int8", [("int8", 8)]),
    ("zen4", "auto", [("int8", 8), ("bf16", None), ("fp32", None)]),
    ("zen5", "bf16", [("bf16", None)]),
    ("zen5", "auto", [("int8", 8), ("bf16", None), ("fp32", None)]),
    ("sapphire_rapids", "bf16", [("bf16", None)]),
    ("sapphire_rapids", "int8", [("int8", 8)]),
    ("sapphire_rapids", "auto", [("int8", 8), ("bf16", None), ("fp32", None)]),
    ("graviton3", "fp32", [("fp32", None)]),
    ("graviton3", "bf16", [("bf16", None)]),
    ("graviton3", "int8", [("int8", 8)]),
    ("graviton3", "auto", [("int8", 8), ("bf16", None), ("fp32", None)]),
])
def test_decisions_on_the_saved_cpus(name: str, requested: str, expected: list) -> None:
    assert served(name, requested) == expected


def test_bf16_without_bf16_units_is_fp32_with_the_missing_flags_named() -> None:
    choice = decide("bf16", saved_facts("zen3")).served
    assert choice.dtype == "fp32"
    assert "avx512_bf16 or amx_bf16" in choice.reason
    arm = decide("bf16", CpuFacts(ARM, frozenset({"asimd", "asimddp"}))).served
    assert (arm.dtype, "missing bf16" in arm.reason) == ("fp32", True)


def test_int8_ranges_follow_vnni() -> None:
    avx2 = decide("int8", saved_facts("zen3")).served
    assert avx2.reduce_range and "vpmaddubsw" in avx2.reason and "0..127" in avx2.reason
    vnni = decide("int8", saved_facts("zen4")).served
    assert not vnni.reduce_range and "avx512_vnni" in vnni.reason
    assert "amx_int8" in decide("int8", saved_facts("sapphire_rapids")).served.reason
    assert "i8mm" in decide("int8", saved_facts("graviton3")).served.reason


@pytest.mark.parametrize("facts", [
    CpuFacts(X86, frozenset({"sse4_2", "avx"})),  # before Haswell: no AVX2
    CpuFacts(ARM, frozenset({"fp", "asimd"})),  # Cortex-A72 (Graviton 1): no dot product
    CpuFacts("riscv64", frozenset({"rv64imafdc"})),
])
def test_int8_without_any_int8_dot_product_is_fp32(facts: CpuFacts) -> None:
    choice = decide("int8", facts).served
    assert choice.dtype == "fp32" and choice.activation_bits is None
    assert "no int8 dot product" in choice.reason
    assert [c.dtype for c in decide("auto", facts).candidates] == ["fp32"]


def test_an_unknown_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match="'fp16'"):
        decide("fp16", saved_facts("sapphire_rapids"))


def test_deciding_takes_microseconds() -> None:
    facts = saved_facts("zen3")
    start = time.perf_counter()
    for _ in range(1000):
        decide("bf16", facts)
        decide("auto", facts)
    assert time.perf_counter() - start < 1.0  # ~20 us per pair here; nothing is built


def test_machine_names_are_normalised() -> None:
    assert [normal_arch(m) for m in ("x86_64", "AMD64", "aarch64", "arm64", "ppc64le")] == \
        [X86, X86, ARM, ARM, "ppc64le"]


def test_cpuinfo_lines_are_read_per_architecture() -> None:
    x86 = "processor\t: 0\nmodel name\t: AMD EPYC 7763\nflags\t\t: fpu avx2 fma\n\n" \
          "processor\t: 1\nflags\t\t: other\n"
    assert parse_cpuinfo(x86) == ("AMD EPYC 7763", frozenset({"fpu", "avx2", "fma"}))
    arm = "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd bf16 i8mm\n"
    assert parse_cpuinfo(arm) == ("", frozenset({"fp", "asimd", "bf16", "i8mm"}))


def test_reading_the_machine_is_separate_and_tolerates_no_cpuinfo(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cpuinfo").write_text("Features\t: fp asimd asimddp\n")
    assert read_cpu_facts(SysRoot(tmp_path), machine="arm64") == \
        CpuFacts(ARM, frozenset({"fp", "asimd", "asimddp"}), "")
    none = read_cpu_facts(SysRoot(tmp_path / "absent"), machine="x86_64")
    assert none.flags == frozenset() and decide("bf16", none).served.dtype == "fp32"


def test_the_module_imports_only_the_standard_library_and_host_facts() -> None:
    """A decision on data: the CPU facts come from launcher.host, nothing else is needed."""
    tree = ast.parse(Path(precision.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    imported -= {"torchserve_cpu"} if all(
        node.module == "torchserve_cpu.launcher.host" for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torchserve_")
    ) else set()
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}


def zen4_root(tmp_path: Path) -> SysRoot:
    """A root whose /proc/cpuinfo shows the saved Zen 4's flags."""
    (tmp_path / "proc").mkdir()
    flags = " ".join(sorted(saved_facts("zen4").flags))
    (tmp_path / "proc" / "cpuinfo").write_text(f"model name\t: AMD EPYC 9654\nflags\t\t: {flags}\n")
    return SysRoot(tmp_path)


def test_a_onednn_isa_cap_hides_the_units_above_it(tmp_path: Path) -> None:
    """ONEDNN_MAX_CPU_ISA=AVX2 on a Zen 4: oneDNN runs neither VNNI nor AVX512-BF16, so bf16
    is refused (the emulated one would serve) and int8 keeps 7-bit activations."""
    root = zen4_root(tmp_path)
    facts = read_cpu_facts(root, "x86_64", {"ONEDNN_MAX_CPU_ISA": "avx2"})
    assert facts.isa_cap == "AVX2" and {"avx512_bf16", "avx512_vnni"} <= facts.hidden
    bf16 = decide("bf16", facts).served
    assert bf16.dtype == "fp32" and "ONEDNN_MAX_CPU_ISA=AVX2 keeps oneDNN from" in bf16.reason
    assert decide("int8", facts).served.activation_bits == 7
    vnni = read_cpu_facts(root, "x86_64", {"DNNL_MAX_CPU_ISA": "AVX512_CORE_VNNI"})
    assert decide("int8", vnni).served.activation_bits == 8
    assert decide("bf16", vnni).served.dtype == "fp32"
    # no cap, or one oneDNN does not know: every flag counts
    for environ in ({}, {"ONEDNN_MAX_CPU_ISA": "ALL"}, {"ONEDNN_MAX_CPU_ISA": "bogus"}):
        facts = read_cpu_facts(root, "x86_64", environ)
        assert not facts.hidden and decide("bf16", facts).served.dtype == "bf16"
