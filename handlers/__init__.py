"""Optimizing TorchServe handlers for CPUs."""

from pathlib import Path

# The file to give `torch-model-archiver --handler` (`torchserve-cpu handler-path` prints it).
HANDLER_FILE = Path(__file__).resolve().with_name("ipex_handler.py")
