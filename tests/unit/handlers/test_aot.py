"""The aot backend's decisions on data: records, compatibility, the pt2: section, the
optimizer falling back; the package loader (the one I/O seam) replaced by the eager model."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torchserve_cpu.handlers import aot_package as aot
from torchserve_cpu.handlers.aot_package import (
    SCHEMA,
    InputSpec,
    PackageRecord,
    Runtime,
    example_digest,
    incompatibilities,
    input_mismatch,
)
from torchserve_cpu.handlers.model_config import parse_settings
from torchserve_cpu.handlers.optimize import aot_load
from torchserve_cpu.handlers.optimize.aot_load import AotModule, LoadGuard
from torchserve_cpu.handlers.optimize.ipex_support import IpexStatus
from torchserve_cpu.handlers.optimize.optimizer import candidate_plans, optimize
from torchserve_cpu.handlers.optimize.pipeline import FALLBACKS, PRESET_STEPS, STEPS
from torchserve_cpu.handlers.pt2_section import apply_pt2
from torchserve_cpu.handlers.settings import HandlerSettings

NO_IPEX = IpexStatus(None, "not installed")
HERE = Runtime("2.13.0+cpu", "abc123", frozenset({"avx2", "avx512f", "fma"}))


def tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.LazyLinear(5)).eval()


EXAMPLE = (torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(1)),)


def record(**changes: object) -> PackageRecord:
    base = PackageRecord(
        dtype="fp32", torch=HERE.torch, torch_git=HERE.torch_git, cpu_flags=("avx2", "fma"),
        build_cpu="test cpu", vec_isa="avx2", min_batch=1, max_batch=8,
        inputs=(InputSpec((3, 6, 6), "float32", True),), example_digest=example_digest(EXAMPLE),
        reference=((0.5, -1.0),), package_bytes=3)
    return dataclasses.replace(base, **changes)


def test_record_survives_json() -> None:
    original = record(checked={"batch 1": {"cosine": 1.0}}, refused="no")
    assert PackageRecord.from_json(original.to_json()) == original


def test_unreadable_record_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unreadable aot record"):
        PackageRecord.from_json('{"dtype": "fp32"}')


def test_compatible_record_has_no_problems() -> None:
    assert incompatibilities(record(), HERE) == []


@pytest.mark.parametrize(("changes", "says"), [
    ({"torch": "2.99.0+cpu"}, "built for torch 2.99.0+cpu, running 2.13.0+cpu"),
    ({"torch_git": "def456"}, "built for torch commit def456"),
    ({"cpu_flags": ("avx2", "amx_tile", "avx512_bf16")}, "lacks amx_tile avx512_bf16"),
    ({"schema": "torchserve-cpu-aot/0"}, "record schema"),
])
def test_each_incompatibility_is_named(changes: dict, says: str) -> None:
    problems = incompatibilities(record(**changes), HERE)
    assert len(problems) == 1 and says in problems[0]


def test_inputs_must_have_the_compiled_shape() -> None:
    assert input_mismatch(record(), EXAMPLE) is None
    message = input_mismatch(record(), (torch.randn(1, 3, 8, 8),))
    assert message and "(3, 6, 6)" in message and "(3, 8, 8)" in message


def test_example_digest_follows_values_and_shapes() -> None:
    assert example_digest(EXAMPLE) == example_digest((EXAMPLE[0].clone(),))
    assert example_digest(EXAMPLE) != example_digest((EXAMPLE[0] + 1,))
    assert example_digest(EXAMPLE) != example_digest((EXAMPLE[0].reshape(1, 3, 36),))


def test_module_runs_any_batch_within_bounds_and_chunks_larger_ones() -> None:
    seen: list[tuple[int, bool]] = []

    def compiled(x: torch.Tensor) -> list[torch.Tensor]:
        seen.append((x.shape[0], x.is_contiguous(memory_format=torch.channels_last)))
        return [x.sum(dim=(1, 2, 3)).unsqueeze(1)]

    first_calls: list[int] = []
    module = AotModule(compiled, max_batch=4, channels_last=True,
                       on_first_call=lambda: first_calls.append(1))
    for batch in (1, 3, 4, 10):
        x = torch.randint(-9, 9, (batch, 2, 3, 3)).float()  # exact sums in any layout
        assert torch.equal(module(x), x.sum(dim=(1, 2, 3)).unsqueeze(1))
    assert [size for size, _ in seen] == [1, 3, 4, 4, 4, 2]
    assert all(layout for _, layout in seen)  # given in the layout the package expects
    assert first_calls == [1]


# -- the vocabulary and the pt2: section ------------------------------------------------


def test_aot_is_a_preset_that_falls_back_to_the_traced_pipelines() -> None:
    assert PRESET_STEPS["aot"] == ("aot",) and STEPS["aot"].replaces_module
    assert FALLBACKS["aot"] == ("default", "jit")
    plans = [p.describe() for p in candidate_plans(parse_settings({"optimize": "aot",
                                                                   "dtype": "bf16"}))]
    assert plans[:2] == ["aot[aot] bf16", "aot[aot]"]
    assert plans[2].startswith("default[") and plans[-1] == "eager[eager]"


def test_aot_max_batch_is_checked() -> None:
    assert parse_settings({"aot_max_batch": 16}).aot_max_batch == 16
    with pytest.raises(ValueError, match="handler.aot_max_batch"):
        parse_settings({"aot_max_batch": 0})


@pytest.mark.parametrize(("pt2", "handler", "optimize", "options"), [
    (None, {}, "default", {}),
    ({"compile": {"enable": True}}, {}, "compile", {"options": {}}),
    ({"compile": {"enable": False, "mode": "max-autotune"}}, {}, "default", {}),
    ({"compile": {"enable": True, "backend": "inductor", "mode": "max-autotune",
                  "fullgraph": True, "dynamic": False, "options": {"cpp.threads": 2}}},
     {}, "compile", {"fullgraph": True, "dynamic": False,
                     "options": {"max_autotune": True, "cpp.threads": 2}}),
    ({"compile": {"enable": True, "options": {"max_autotune": True}}}, {"optimize": "aot"},
     "aot", {"options": {"max_autotune": True}}),
    ({"export": {"aot_compile": True}}, {}, "aot", {}),
    ("inductor", {}, "compile", {"options": {}}),
    ({"backend": "inductor", "mode": "default"}, {}, "compile", {"options": {}}),
])
def test_pt2_maps_onto_the_settings(pt2: object, handler: dict, optimize: str,
                                    options: dict) -> None:
    settings = apply_pt2(parse_settings(handler), pt2, handler)
    assert settings.optimize == optimize
    assert dict(settings.compile_options) == options


@pytest.mark.parametrize(("pt2", "handler", "names"), [
    ({"compile": {"enable": True}, "speed": "max"}, {}, "pt2.speed: unknown key"),
    ({"compile": {"enable": True, "turbo": True}}, {}, "pt2.compile.turbo: unknown key"),
    ({"export": {"aot_compile": True, "dir": "x"}}, {}, "pt2.export.dir: unknown key"),
    ({"optimizer": "fast"}, {}, "pt2.optimizer: unknown key"),
    ({"compile": {"mode": "default"}}, {}, "pt2.compile.enable: expected true or false"),
    ({"compile": {"enable": True, "backend": "openvino"}}, {}, "pt2.compile.backend"),
    ("ipex", {}, "pt2.backend: 'ipex' is not supported"),
    ({"compile": {"enable": True, "mode": "reduce-overhead"}}, {}, "pt2.compile.mode"),
    ({"compile": {"enable": True, "options": {"no_such_option": 1}}}, {},
     "pt2.compile.options.no_such_option: not an inductor option"),
    ({"compile": {"enable": True}}, {"optimize": "default"}, "handler.optimize is 'default'"),
    ({"compile": {"enable": True, "dynamic": True}}, {"optimize": "aot"},
     "pt2.compile.dynamic: does not apply"),
    ({"export": {"aot_compile": True}}, {"optimize": "jit"}, "pt2.export.aot_compile"),
    ({"compile": {"enable": True}, "export": {"aot_compile": True}}, {},
     "pt2.export.aot_compile"),
    (["inductor"], {}, "pt2: expected a mapping"),
])
def test_pt2_keys_that_do_not_map_are_refused_by_name(pt2: object, handler: dict,
                                                      names: str) -> None:
    with pytest.raises(ValueError, match=names.replace("(", r"\(")):
        apply_pt2(parse_settings(handler), pt2, handler)


# -- the step and the optimizer -------------------------------------------------------------


@pytest.fixture
def archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model folder holding an fp32 record and a stand-in package; the loader runs a
    channels-last copy of the eager model, as the compiled package would."""
    eager = tiny_net()
    with torch.no_grad():
        reference = eager(*EXAMPLE)
    (tmp_path / "aot-fp32.pt2").write_bytes(b"pt2")
    (tmp_path / "aot-fp32.json").write_text(record(
        reference=tuple(tuple(row) for row in reference.tolist())).to_json())
    monkeypatch.setattr(aot.Runtime, "here", classmethod(lambda cls: HERE))
    monkeypatch.setattr(aot_load, "load_package", lambda path: lambda *xs: [eager(*xs)])
    return tmp_path


def aot_settings(**handler: object) -> HandlerSettings:
    return parse_settings({"optimize": "aot", **handler})


def must_not_load() -> torch.nn.Module:
    raise AssertionError("the eager model was loaded")


def test_a_good_package_serves_without_the_eager_model(archive: Path) -> None:
    chosen = optimize(must_not_load, EXAMPLE, aot_settings(), NO_IPEX, True, archive)
    assert chosen.plan.name == "aot" and chosen.stage.ahead_of_time
    assert chosen.rejected == () and chosen.agreement.cosine > 0.9999
    assert chosen(torch.randn(5, 3, 6, 6)).shape == (5, 5)
    assert not list(archive.glob(".aot-fp32.pt2.loading-*"))  # the guard is gone


@pytest.mark.parametrize(("edit", "reason"), [
    ({"torch": "2.99.0+cpu"}, "built for torch 2.99.0+cpu"),
    ({"cpu_flags": ("avx2", "amx_tile")}, "this CPU lacks amx_tile"),
    ({"refused": "cosine 0.9 < 0.99"}, "accuracy gate refused the fp32 package"),
    ({"package_bytes": 4}, "damaged or replaced"),
    ({"inputs": (InputSpec((3, 8, 8), "float32", True),)}, "the package takes"),
])
def test_a_package_that_cannot_run_falls_back_with_its_reason(
        archive: Path, edit: dict, reason: str, caplog: pytest.LogCaptureFixture) -> None:
    current = PackageRecord.from_json((archive / "aot-fp32.json").read_text())
    (archive / "aot-fp32.json").write_text(dataclasses.replace(current, **edit).to_json())
    loads: list[int] = []

    def load() -> torch.nn.Module:
        loads.append(1)
        return tiny_net()

    with caplog.at_level(logging.WARNING):
        chosen = optimize(load, EXAMPLE, aot_settings(), NO_IPEX, True, archive)
    assert chosen.plan.name == "default" and loads == [1]
    assert reason in chosen.rejected[0] and chosen.rejected[0].startswith("aot[aot] failed")
    assert reason in caplog.text


def test_missing_package_says_how_to_build_it(archive: Path) -> None:
    chosen = optimize(tiny_net, EXAMPLE, aot_settings(dtype="bf16"), NO_IPEX, True, archive)
    assert chosen.plan.describe() == "aot[aot]"  # bf16 missing: the fp32 package serves
    assert "no bf16 package" in chosen.rejected[0] and "--aot" in chosen.rejected[0]


def test_a_changed_example_is_checked_against_eager(archive: Path) -> None:
    other = (EXAMPLE[0] * 2,)
    chosen = optimize(tiny_net, other, aot_settings(), NO_IPEX, True, archive)
    assert chosen.plan.name == "aot"
    assert "checked against eager" in chosen.stage.notes[0]


def test_a_worker_that_died_loading_stops_the_next_from_trying(archive: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (archive / f".aot-fp32.pt2.loading-{dead}").touch()
    assert LoadGuard(archive / "aot-fp32.pt2").died_before() == int(dead)
    chosen = optimize(tiny_net, EXAMPLE, aot_settings(), NO_IPEX, True, archive)
    assert chosen.plan.name == "default"
    assert f"worker {dead} died loading it" in chosen.rejected[0]


def test_record_schema_constant_is_what_records_carry() -> None:
    assert record().schema == SCHEMA
