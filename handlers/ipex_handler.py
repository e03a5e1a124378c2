"""The handler file to archive: `torch-model-archiver --handler handlers/ipex_handler.py`.

TorchServe instantiates the one class defined in this file. Everything it does lives in
the installed `handlers` package; model-config.yaml's `handler:` section picks the task
(image_classification, text_classification, text_embedding) and the optimization.
"""

from handlers.optimizing_handler import OptimizingHandler


class IpexHandler(OptimizingHandler):
    """Optimizing CPU handler: ipex.optimize when usable, else native PyTorch, then
    channels-last, trace, freeze; pinned to this worker's cores."""
