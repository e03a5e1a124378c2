"""Paths of the files this package ships for TorchServe, in one place.

The handler file to give `torch-model-archiver --handler` and the metrics config that
declares the handler's metrics both live in the handlers' folder; they are found by the
import system's spec, so asking for a path imports no handler code (and no torch).
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path


def _handlers_dir() -> Path:
    spec = find_spec("torchserve_cpu.handlers")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("torchserve_cpu.handlers is not installed")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


#: `torch-model-archiver --handler` (`torchserve-cpu handler-path` prints it)
HANDLER_FILE = _handlers_dir() / "ipex_handler.py"
#: TorchServe's metrics config with this package's worker metrics declared
#: (`torchserve-cpu metrics-config-path` prints it; `serve` adds it when a config has none)
METRICS_CONFIG = _handlers_dir() / "metrics.yaml"
