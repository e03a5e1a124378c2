"""The host cache of int8 packages for archives without one: its key, and built once."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.capabilities import saved_facts
from torchserve_cpu.handlers.aot_package import Runtime
from torchserve_cpu.handlers.archive import host_cache
from torchserve_cpu.handlers.archive.host_cache import archive_digest, host_int8_package, host_key
from torchserve_cpu.handlers.model_config import parse_settings

SETTINGS = parse_settings({"dtype": "int8"})
ZEN4 = Runtime("2.13.0+cpu", "abc", saved_facts("zen4").flags)


def archive(folder: Path, weights: bytes = b"w") -> Path:
    folder.mkdir()
    (folder / "model.py").write_text("class M: ...\n")
    (folder / "m.pt").write_bytes(weights)
    (folder / "calibration").mkdir()
    (folder / "calibration" / "a.png").write_bytes(b"png")
    (folder / "MAR-INF").mkdir()
    (folder / "MAR-INF" / "MANIFEST.json").write_text('{"createdOn": "now"}')
    return folder


def test_the_digest_is_the_archives_content_not_its_manifest(tmp_path: Path) -> None:
    one, two = archive(tmp_path / "one"), archive(tmp_path / "two")
    (two / "MAR-INF" / "MANIFEST.json").write_text('{"createdOn": "later"}')
    (two / ".aot-int8.pt2.loading-12").touch()  # a worker's marker is not content
    assert archive_digest(one) == archive_digest(two)
    (two / "calibration" / "a.png").write_bytes(b"other")
    assert archive_digest(one) != archive_digest(two)


def test_the_key_follows_settings_torch_and_cpu() -> None:
    key = host_key("digest", SETTINGS, ZEN4)
    assert key == host_key("digest", SETTINGS, ZEN4)
    zen3 = dataclasses.replace(ZEN4, cpu_flags=saved_facts("zen3").flags)
    others = [host_key("other", SETTINGS, ZEN4),
              host_key("digest", parse_settings({"dtype": "int8", "channels_last": False}), ZEN4),
              host_key("digest", SETTINGS, dataclasses.replace(ZEN4, torch="2.14.0+cpu")),
              host_key("digest", SETTINGS, zen3),
              host_key("digest", SETTINGS, dataclasses.replace(  # ONEDNN_MAX_CPU_ISA=AVX2
                  ZEN4, onednn_flags=saved_facts("zen4").flags - {"avx512_vnni"}))]
    assert key not in others and len(set(others)) == len(others)


def test_built_once_then_every_worker_hits(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[Path] = []

    def build(model_dir, manifest, config, out_dir, *args, only=None):  # noqa: ANN001
        assert only == ("int8",) and config["handler"]["dtype"] == "int8"
        builds.append(out_dir)
        (out_dir / "aot-int8.json").write_text("{}")
        (out_dir / "aot-int8.pt2").write_bytes(b"pt2")
        return [object()]

    monkeypatch.setattr(host_cache, "build_packages", build)
    model_dir = archive(tmp_path / "a")
    first = host_int8_package(model_dir, {}, {"dtype": "int8"}, SETTINGS, tmp_path / "cache",
                              builder=None)
    second = host_int8_package(model_dir, {}, {"dtype": "int8"}, SETTINGS, tmp_path / "cache",
                               builder=None)
    assert (first.outcome, second.outcome) == ("miss", "hit") and len(builds) == 1
    assert first.folder == second.folder and (first.folder / "aot-int8.pt2").exists()


def test_a_failed_build_leaves_nothing_and_says_why(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def build(*args, **kwargs):  # noqa: ANN002, ANN003
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(host_cache, "build_packages", build)
    model_dir = archive(tmp_path / "a")
    found = host_int8_package(model_dir, {}, {}, SETTINGS, tmp_path / "cache", builder=None)
    assert found.folder is None and found.outcome == "failed"
    assert "no C++ compiler" in found.detail
    assert not [p for p in (tmp_path / "cache" / "int8").iterdir() if p.is_dir()]
    # remembered: the next worker is told at once, not made to fail the build again
    again = host_int8_package(model_dir, {}, {}, SETTINGS, tmp_path / "cache", builder=None)
    assert again.outcome == "failed" and "no C++ compiler" in again.detail
    assert "delete" in again.detail


#: a stand-in builder child: counts its runs, waits, then writes a package or fails
STAND_IN = """
import json, sys, time
from pathlib import Path
request = json.loads(sys.argv[-1])
folder = Path(request["folder"])
with open(folder.parent / "runs", "a") as runs:
    runs.write("run\\n")
time.sleep(float(sys.argv[1]))
if sys.argv[2] == "fail":
    raise SystemExit(3)
folder.mkdir()
(folder / "aot-int8.json").write_text("{}")
(folder / "aot-int8.pt2").write_bytes(b"pt2")
"""

WORKER = """
import sys
from pathlib import Path
from torchserve_cpu.handlers.archive.host_cache import host_int8_package
from torchserve_cpu.handlers.model_config import parse_settings
host_int8_package(Path(sys.argv[1]), {}, {"dtype": "int8"}, parse_settings({"dtype": "int8"}),
                  Path(sys.argv[2]), builder=[sys.executable, sys.argv[3], "3", "ok"])
"""


def stand_in(tmp_path: Path, seconds: float, outcome: str) -> list[str]:
    script = tmp_path / "builder.py"
    script.write_text(STAND_IN)
    return [sys.executable, str(script), str(seconds), outcome]


def test_a_killed_worker_leaves_its_build_running_and_the_next_one_waits(
        tmp_path: Path) -> None:
    model_dir, cache = archive(tmp_path / "a"), tmp_path / "cache"
    builder = stand_in(tmp_path, 3, "ok")
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(model_dir), str(cache),
                               builder[1]], cwd=Path(__file__).resolve().parents[3])
    runs = cache / "int8" / "runs"
    deadline = time.monotonic() + 30
    while not runs.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runs.exists(), "the worker never started its builder"
    worker.kill()  # TorchServe's startup timeout, mid-build
    worker.wait()
    started = time.monotonic()
    found = host_int8_package(model_dir, {}, {"dtype": "int8"}, SETTINGS, cache,
                              builder=builder)
    assert found.outcome == "hit" and (found.folder / "aot-int8.pt2").exists()
    assert runs.read_text().count("run") == 1  # waited for the build, did not start another
    assert time.monotonic() - started > 0.5


def test_a_builder_that_fails_is_reported_and_remembered(tmp_path: Path) -> None:
    model_dir, cache = archive(tmp_path / "a"), tmp_path / "cache"
    builder = stand_in(tmp_path, 0, "fail")
    found = host_int8_package(model_dir, {}, {}, SETTINGS, cache, builder=builder)
    assert found.outcome == "failed" and "exited with 3" in found.detail
    again = host_int8_package(model_dir, {}, {}, SETTINGS, cache, builder=builder)
    assert again.outcome == "failed" and (cache / "int8" / "runs").read_text().count("run") == 1
