"""A TorchServe handler that only pins itself and reports where it runs."""

from __future__ import annotations

import json
import os

from launcher.worker import pin_current_worker


class ProbeHandler:
    """initialize() pins, as the product handler does first thing; handle() reports."""

    def __init__(self) -> None:
        self.placement = None
        self.initialized = False

    def initialize(self, context) -> None:
        self.placement = pin_current_worker(context.manifest["model"]["modelName"])
        self.initialized = True

    def handle(self, data, context) -> list[str]:
        import torch

        report = {
            "pid": os.getpid(),
            "threads": torch.get_num_threads(),
            "affinity": sorted(os.sched_getaffinity(0)),
            "placement": None if self.placement is None else self.placement.describe(),
            "allocator": None if self.placement is None else self.placement.allocator,
        }
        return [json.dumps(report) for _ in data]
