"""Optimizing TorchServe handlers for CPUs."""

from pathlib import Path

# The file to give `torch-model-archiver --handler` (`torchserve-cpu handler-path` prints it).
HANDLER_FILE = Path(__file__).resolve().with_name("ipex_handler.py")

# TorchServe's metrics config with this package's worker metrics declared (handlers.metrics;
# `torchserve-cpu metrics-config-path` prints it).
METRICS_CONFIG = Path(__file__).resolve().with_name("metrics.yaml")
