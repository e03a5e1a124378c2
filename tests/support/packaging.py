"""The package as users get it: a wheel built from a copy of the checkout, and a fresh
venv holding CPU torch and TorchServe (and nothing of the repo) to install it into."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# What a TorchServe user already has; the same torch as the main venv (scripts/setup.sh).
TORCH_SPEC = os.environ.get("TSCPU_TORCH_SPEC", "torch==2.13.0")
TORCHSERVE_SPECS = ("torchserve==0.12.0", "torch-model-archiver==0.12.0")
REPO = Path(__file__).resolve().parents[2]
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "*.egg-info", "__pycache__", "results", "*.mar", "logs", "tests"
)


def build_wheel(work: Path) -> Path:
    """Build the wheel from a copy of the checkout (setuptools writes build/ beside the
    sources, and tests never write the repo)."""
    source = work / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCES)
    dist = work / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(dist), str(source)],
        check=True, timeout=300,
    )
    (wheel,) = dist.glob("torchserve_cpu-*.whl")
    return wheel


def plugin_venv(work: Path, wheel: Path) -> Path:
    """A fresh venv with CPU torch and TorchServe, then the wheel and its run-time
    dependencies only; returns its bin folder."""
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    index = os.environ.get("TSCPU_TORCH_INDEX_URL")
    subprocess.run([*pip, *(["--index-url", index] if index else []), TORCH_SPEC],
                   check=True, timeout=900)
    constraint = work / "torch-constraint.txt"
    constraint.write_text(TORCH_SPEC + "\n")
    subprocess.run([*pip, "-c", str(constraint), *TORCHSERVE_SPECS], check=True, timeout=900)
    subprocess.run([*pip, "-c", str(constraint), str(wheel)], check=True, timeout=900)
    return venv / "bin"
