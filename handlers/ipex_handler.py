"""The handler file to archive: `torch-model-archiver --handler $(torchserve-cpu handler-path)`.

TorchServe instantiates the one class defined in this file. Everything it does lives in
the installed `torchserve_cpu.handlers` package; model-config.yaml's `handler:` section
picks the task (image_classification, text_classification, text_embedding, tensor) and the
optimization (IPEX when it imports and matches torch, else native PyTorch).
"""

from torchserve_cpu.handlers.optimizing_handler import OptimizingHandler


class TorchServeCpuHandler(OptimizingHandler):
    """The optimizing handler, defined here so TorchServe finds it in the archived file."""
