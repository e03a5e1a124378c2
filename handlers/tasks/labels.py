"""Optional class names shipped in the archive as index_to_name.json ({"0": "cat", ...})."""

from __future__ import annotations

import json
from pathlib import Path


def read_labels(model_dir: Path) -> dict[int, str]:
    """Index -> name, empty when the archive has no index_to_name.json."""
    path = model_dir / "index_to_name.json"
    if not path.exists():
        return {}
    return {int(k): str(v) for k, v in json.loads(path.read_text()).items()}
