"""Read and write TorchServe's config.properties (Java properties, the subset it uses)."""

from __future__ import annotations

from pathlib import Path


def parse_properties(text: str) -> dict[str, str]:
    """Key/value pairs of a properties text.

    Handles comments (# or !), `key=value` and `key: value`, and backslash line
    continuation, which TorchServe users rely on for long `models=` JSON values.
    """
    properties: dict[str, str] = {}
    logical = ""
    for raw in text.splitlines():
        line = raw.strip() if not logical else raw.lstrip()
        if not logical and (not line or line[0] in "#!"):
            continue
        if line.endswith("\\") and not line.endswith("\\\\"):
            logical += line[:-1]
            continue
        logical += line
        key, value = _split_pair(logical)
        properties[key] = value
        logical = ""
    if logical:
        key, value = _split_pair(logical)
        properties[key] = value
    return properties


def _split_pair(line: str) -> tuple[str, str]:
    positions = [p for p in (line.find("="), line.find(":")) if p >= 0]
    if not positions:
        return line.strip(), ""
    cut = min(positions)
    return line[:cut].strip(), line[cut + 1 :].strip()


def read_properties(path: Path) -> dict[str, str]:
    return parse_properties(Path(path).read_text())

