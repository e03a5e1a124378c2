"""Unit tests of the launcher: pure code over saved topologies, no processes."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "data" / "topologies"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.unit)


def materialize(dump: Path, root: Path) -> Path:
    """Write a `grep -r .` dump (path:line per line) as a file tree under root.

    This is the only fake in the launcher's unit tests: a saved /sys and /proc.
    """
    for raw in dump.read_text().splitlines():
        if raw.startswith("#") or ":" not in raw:
            continue
        path, line = raw.split(":", 1)
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("a") as handle:
            handle.write(line + "\n")
    return root


@pytest.fixture
def sysfs_tree(tmp_path: Path):
    """Factory: the saved dump with this name, materialized under a tmp root."""

    def build(name: str) -> Path:
        return materialize(DATA / name, tmp_path / name.removesuffix(".txt"))

    return build
