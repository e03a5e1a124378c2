"""The real intel-extension-for-pytorch 2.8.0, unpacked outside the repo, for the main venv.

Put on PYTHONPATH under the main venv's torch 2.13 it fails at import exactly as a user's
mismatched install does. The wheel (~50 MB, seconds to fetch) is downloaded once with pip
into the user cache; `None` (with the reason) when it cannot be had, so tests skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

IPEX_PIN = "intel-extension-for-pytorch==2.8.0"
#: A stand-in whose import raises AttributeError, as the real one does under torch 2.13.
FAKE_DIR = Path(__file__).resolve().parent / "mismatched_ipex"


def cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "torchserve-cpu" / "ipex-wheel-2.8.0"


def real_ipex_dir() -> tuple[Path | None, str]:
    """(folder to put on PYTHONPATH, "") or (None, why not)."""
    unpacked = cache_dir() / "site"
    if (unpacked / "intel_extension_for_pytorch" / "__init__.py").exists():
        return unpacked, ""
    wheels = cache_dir() / "wheels"
    if not list(wheels.glob("intel_extension_for_pytorch-*.whl")):
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels),
             IPEX_PIN],
            capture_output=True, text=True, timeout=300, check=False)
        if result.returncode != 0:
            return None, f"pip download {IPEX_PIN} failed: {result.stderr.strip()[-300:]}"
    wheel = sorted(wheels.glob("intel_extension_for_pytorch-*.whl"))[-1]
    partial = unpacked.with_name("site.partial")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(partial)
    partial.rename(unpacked)
    return unpacked, ""
