"""A TorchServe handler that only pins itself and reports where it runs."""

from __future__ import annotations

import json
import os
import time

from torchserve_cpu.launcher.torchserve.worker import pin_current_worker


class ProbeHandler:
    """initialize() pins, as the product handler does first thing; handle() follows a
    re-balance as the product handler does, then reports."""

    def __init__(self) -> None:
        self.pinned = None
        self.initialized = False

    def initialize(self, context) -> None:
        import torch

        self.pinned = pin_current_worker(context.manifest["model"]["modelName"])
        # a load of $TSCPU_PROBE_LOAD_S seconds of Python steps, as building a model is:
        # workers started together re-seat each other meanwhile
        deadline = time.monotonic() + float(os.environ.get("TSCPU_PROBE_LOAD_S", "0"))
        while time.monotonic() < deadline:
            sum(range(1000))
        self.threads_at_ready = torch.get_num_threads()
        self.initialized = True

    def handle(self, data, context) -> list[str]:
        import torch

        if self.pinned is not None:
            self.pinned.refresh()
        placement = None if self.pinned is None else self.pinned.placement
        report = {
            "pid": os.getpid(),
            "threads": torch.get_num_threads(),
            "threads_at_ready": self.threads_at_ready,
            "affinity": sorted(os.sched_getaffinity(0)),
            "placement": None if placement is None else placement.describe(),
            "allocator": None if placement is None else placement.allocator,
        }
        return [json.dumps(report) for _ in data]
