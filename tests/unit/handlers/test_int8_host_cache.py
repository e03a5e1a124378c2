"""The host cache of int8 packages for archives without one: its key, and built once."""

from __future__ import annotations

import dataclasses
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
              host_key("digest", SETTINGS, zen3)]
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
    first = host_int8_package(model_dir, {}, {"dtype": "int8"}, SETTINGS, tmp_path / "cache")
    second = host_int8_package(model_dir, {}, {"dtype": "int8"}, SETTINGS, tmp_path / "cache")
    assert (first.outcome, second.outcome) == ("miss", "hit") and len(builds) == 1
    assert first.folder == second.folder and (first.folder / "aot-int8.pt2").exists()


def test_a_failed_build_leaves_nothing_and_says_why(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def build(*args, **kwargs):  # noqa: ANN002, ANN003
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(host_cache, "build_packages", build)
    found = host_int8_package(archive(tmp_path / "a"), {}, {}, SETTINGS, tmp_path / "cache")
    assert found.folder is None and found.outcome == "failed"
    assert "no C++ compiler" in found.detail
    assert not [p for p in (tmp_path / "cache" / "int8").iterdir() if p.is_dir()]
