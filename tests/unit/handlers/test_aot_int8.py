"""int8 AOTInductor packages: the record's int8 facts, which package a CPU may run (on the
saved CPUs of tests/data/capabilities/), the order a worker tries them, and serving one."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from tests.support.capabilities import saved_facts
from torchserve_cpu.handlers import aot_package as aot
from torchserve_cpu.handlers.aot_package import (
    InputSpec,
    PackageRecord,
    Runtime,
    example_digest,
    incompatibilities,
)
from torchserve_cpu.handlers.archive.aot_build import package_dtypes
from torchserve_cpu.handlers.model_config import parse_settings
from torchserve_cpu.handlers.optimize import aot_load, decide
from torchserve_cpu.handlers.optimize.archive_inputs import CheckInputs
from torchserve_cpu.handlers.optimize.ipex_support import IpexStatus
from torchserve_cpu.handlers.optimize.optimizer import candidate_plans, optimize

NO_IPEX = IpexStatus(None, "not installed")
CALIBRATION = (torch.randn(6, 3, 6, 6, generator=torch.Generator().manual_seed(2)),)
EXAMPLE = (CALIBRATION[0][:1],)


def runtime_of(cpu: str) -> Runtime:
    return Runtime("2.13.0+cpu", "abc123", saved_facts(cpu).flags)


def int8_record(bits: int = 8, **changes: object) -> PackageRecord:
    """An int8 package built on a Sapphire Rapids (AVX-512, VNNI, AMX)."""
    base = PackageRecord(
        dtype="int8", torch="2.13.0+cpu", torch_git="abc123", cpu_flags=("avx2", "fma"),
        build_cpu="test cpu", vec_isa="avx512", min_batch=1, max_batch=8,
        inputs=(InputSpec((3, 6, 6), "float32", True),),
        example_digest=example_digest(CALIBRATION), reference=((0.5, -1.0),), package_bytes=3,
        activation_bits=bits, fp32_modules=("blocks.3", "head") if bits == 7 else (),
        int8_flags=("amx_int8", "avx512_vnni") if bits == 8 else (),
        reference_inputs="calibration")
    return dataclasses.replace(base, **changes)


def test_int8_facts_survive_json() -> None:
    for bits in (7, 8):
        original = int8_record(bits, checked={"calibration": {"mean_cosine": 0.97}})
        assert PackageRecord.from_json(original.to_json()) == original


def test_records_written_before_int8_still_read() -> None:
    old = int8_record().to_json().replace('"activation_bits"', '"unknown_key"')
    assert PackageRecord.from_json(old).activation_bits is None


@pytest.mark.parametrize(("cpu", "runs"), [
    ("sapphire_rapids", True), ("zen4", True), ("zen3", False), ("graviton3", True)])
def test_an_8_bit_package_needs_an_int8_dot_product(cpu: str, runs: bool) -> None:
    # cpu_flags of the record kept to avx2/fma (graviton: none) so only the int8 rule speaks
    record = int8_record(cpu_flags=() if cpu == "graviton3" else ("avx2", "fma"))
    problems = incompatibilities(record, runtime_of(cpu))
    assert (problems == []) == runs
    if not runs:
        assert "8-bit int8 activations need" in problems[0] and "amx_int8" in problems[0]


def test_a_7_bit_package_runs_on_avx2_alone() -> None:
    assert incompatibilities(int8_record(7), runtime_of("zen3")) == []


def test_build_host_flags_still_refuse_first() -> None:
    record = int8_record(cpu_flags=("avx2", "avx512_vnni", "amx_int8"))
    problems = incompatibilities(record, runtime_of("zen3"))
    assert "lacks avx512_vnni amx_int8" in problems[0]


@pytest.mark.parametrize(("cpu", "dtype", "first"), [
    ("sapphire_rapids", "int8", ["aot[aot] int8", "quantized[int8] int8", "aot[aot]"]),
    ("zen3", "int8", ["aot[aot] int8", "quantized[int8] int8", "aot[aot]"]),
    ("sapphire_rapids", "auto",
     ["aot[aot] int8", "quantized[int8] int8", "aot[aot] bf16", "aot[aot]"]),
    ("zen3", "auto", ["aot[aot] int8", "quantized[int8] int8", "aot[aot]"]),
])
def test_a_worker_tries_int8_then_bf16_then_fp32_packages(cpu: str, dtype: str,
                                                          first: list[str]) -> None:
    settings = parse_settings({"optimize": "aot", "dtype": dtype})
    plans = [p.describe() for p in candidate_plans(settings, decide(dtype, saved_facts(cpu)))]
    assert plans[:len(first)] == first


def test_without_aot_int8_is_quantized_at_start_as_before() -> None:
    settings = parse_settings({"dtype": "int8"})
    plans = candidate_plans(settings, decide("int8", saved_facts("sapphire_rapids")))
    assert plans[0].describe() == "quantized[int8] int8"


@pytest.mark.parametrize(("requested", "cpu", "dtypes"), [
    ("fp32", "zen3", ("fp32",)),
    ("int8", "zen3", ("fp32", "int8")),  # conv nets static (PT2E), others dynamic
    ("bf16", "zen3", ("fp32", "bf16")),  # asked for: built (and checked) anyway
    ("auto", "sapphire_rapids", ("fp32", "int8", "bf16")),
    ("auto", "zen3", ("fp32", "int8")),
])
def test_which_packages_an_archive_gets(requested: str, cpu: str,
                                        dtypes: tuple[str, ...]) -> None:
    assert package_dtypes(requested, saved_facts(cpu)) == dtypes


# -- serving from a stand-in package ---------------------------------------------------------


class Stand(torch.nn.Module):
    """The 'eager model': its int8 package is a slightly rounded copy."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
                                       torch.nn.Flatten(), torch.nn.Linear(64, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture
def archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """fp32 and int8 records with stand-in packages; this host is a Sapphire Rapids."""
    eager = Stand().eval()
    with torch.no_grad():
        on_calibration = eager(*CALIBRATION)
        on_example = eager(*EXAMPLE)
    rows = lambda t: tuple(tuple(r) for r in t.tolist())  # noqa: E731
    (tmp_path / "aot-int8.pt2").write_bytes(b"pt2")
    (tmp_path / "aot-int8.json").write_text(int8_record(
        cpu_flags=("avx2",), reference=rows(on_calibration)).to_json())
    (tmp_path / "aot-fp32.pt2").write_bytes(b"pt2")
    (tmp_path / "aot-fp32.json").write_text(dataclasses.replace(
        int8_record(cpu_flags=("avx2",)), dtype="fp32", activation_bits=None, int8_flags=(),
        reference_inputs="example", example_digest=example_digest(EXAMPLE),
        reference=rows(on_example)).to_json())
    here = runtime_of("sapphire_rapids")
    monkeypatch.setattr(aot.Runtime, "here", classmethod(lambda cls: here))
    monkeypatch.setattr(aot_load, "load_package",
                        lambda path: lambda *xs: [eager(*xs) + 1e-4])
    return tmp_path


def must_not_load() -> torch.nn.Module:
    raise AssertionError("the eager model was loaded")


def Check() -> CheckInputs:  # noqa: N802 - reads as the handler's object
    """The archive's real inputs as the handler hands them over: read lazily, the first rows
    alone when that is all a package needs."""
    reads: list[int | None] = []

    def read(limit: int | None) -> tuple[torch.Tensor, ...]:
        reads.append(limit)
        return tuple(x[:limit] for x in CALIBRATION)

    check = CheckInputs(None, 1, reader=read)
    check.reads = reads  # type: ignore[attr-defined]
    return check


def test_the_int8_package_serves_checked_on_the_real_inputs(archive: Path) -> None:
    settings = parse_settings({"optimize": "aot", "dtype": "int8"})
    check = Check()
    chosen = optimize(must_not_load, EXAMPLE, settings, NO_IPEX, True, archive, check=check,
                      decision=decide("int8", saved_facts("sapphire_rapids")))
    assert chosen.plan.describe() == "aot[aot] int8" and chosen.rejected == ()
    assert check.reads == [6]  # the record's rows, not the whole set
    assert "aot-int8.pt2 loaded" in chosen.stage.notes[0]
    assert "int8 8-bit activations" in chosen.stage.notes[0]
    assert chosen.stage.quick_check and chosen.stage.check_inputs is not None


def test_a_refused_int8_package_is_not_rebuilt_at_start(
        archive: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An 8-bit package on a Zen 3: refused, no quantizing at start, the fp32 package."""
    here = runtime_of("zen3")
    monkeypatch.setattr(aot.Runtime, "here", classmethod(lambda cls: here))
    settings = parse_settings({"optimize": "aot", "dtype": "int8"})
    chosen = optimize(must_not_load, EXAMPLE, settings, NO_IPEX, True, archive, check=Check(),
                      decision=decide("int8", saved_facts("zen3")))
    assert chosen.plan.describe() == "aot[aot]"
    assert "8-bit int8 activations need" in chosen.rejected[0]
    assert "not quantizing at worker start" in chosen.rejected[1]


def test_auto_times_every_package_the_archive_carries_and_builds_nothing(
        archive: Path) -> None:
    """Packages cost milliseconds: auto loads int8, bf16 and fp32 and times them all, but
    never quantizes at start once the int8 package has passed."""
    eager = Stand().eval()
    with torch.no_grad():
        on_example = eager(*EXAMPLE)
    (archive / "aot-bf16.pt2").write_bytes(b"pt2")
    (archive / "aot-bf16.json").write_text(dataclasses.replace(
        int8_record(cpu_flags=("avx2",)), dtype="bf16", activation_bits=None, int8_flags=(),
        reference_inputs="example", example_digest=example_digest(EXAMPLE),
        reference=tuple(tuple(r) for r in on_example.tolist())).to_json())
    settings = parse_settings({"optimize": "aot", "dtype": "auto"})
    chosen = optimize(must_not_load, EXAMPLE, settings, NO_IPEX, True, archive, check=Check(),
                      decision=decide("auto", saved_facts("sapphire_rapids")))
    assert [t.plan.describe() for t in chosen.tried] == [
        "aot[aot] int8", "aot[aot] bf16", "aot[aot]"]
    assert [name for name, _ in chosen.timings_ms] == [
        "aot[aot] int8", "aot[aot] bf16", "aot[aot]"]
    assert any(line.startswith("quantized[int8] int8 not built: aot[aot] int8 passed first")
               for line in chosen.rejected)


def test_an_8bit_package_is_refused_where_onednn_is_capped_below_vnni() -> None:
    capped = dataclasses.replace(runtime_of("zen4"),
                                 onednn_flags=saved_facts("zen4").flags - {"avx512_vnni"})
    [problem] = incompatibilities(int8_record(cpu_flags=("avx2",)), capped)
    assert "oneDNN may use none (ONEDNN_MAX_CPU_ISA)" in problem
    assert incompatibilities(int8_record(7, cpu_flags=("avx2",)), capped) == []
