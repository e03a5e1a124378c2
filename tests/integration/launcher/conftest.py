"""Integration tests of the launcher: real TorchServe, real /proc, this machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def probe_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store holding probe.mar, built with the real torch-model-archiver."""
    store = tmp_path_factory.mktemp("probe-store")
    archiver = Path(sys.executable).parent / "torch-model-archiver"
    subprocess.run(
        [
            str(archiver),
            "--model-name",
            "probe",
            "--version",
            "1.0",
            "--handler",
            str(HERE / "probe_handler.py"),
            "--export-path",
            str(store),
        ],
        check=True,
        timeout=120,
    )
    return store


@pytest.fixture
def registry_dir(tmp_path: Path) -> Path:
    """Each server gets its own registry, so tests running beside ours do not collide."""
    directory = tmp_path / "registry"
    directory.mkdir()
    return directory
