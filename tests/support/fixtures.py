"""Shared pytest fixtures for support tooling (register via tests/conftest.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.itt import build_itt_collector


@pytest.fixture(scope="session")
def itt_collector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path to the test ITT collector .so, built once per session.

    Skips only when gcc is missing: a build failure is a real error and must fail loudly.
    """
    if shutil.which("gcc") is None:
        pytest.skip("gcc not found on PATH: cannot build the ITT test collector")
    return build_itt_collector(tmp_path_factory.mktemp("itt_collector"))
