"""The TorchServe side of the launcher: its config, its processes, the host-wide registry of
worker seats, the worker's pinning, `torchserve-cpu serve`, and applying a seat (the only
side effects)."""

from torchserve_cpu.launcher.torchserve.processes import torchserve_workers
from torchserve_cpu.launcher.torchserve.registry import Entry, read_entries
from torchserve_cpu.launcher.torchserve.serve import serve_in_foreground, worker_models
from torchserve_cpu.launcher.torchserve.tsconfig import (
    default_workers,
    find_ts_config,
    read_ts_config,
    worker_counts,
)

# the handler pins its worker at load time with these
from torchserve_cpu.launcher.torchserve.worker import (
    PinnedWorker,
    WorkerPlacement,
    pin_current_worker,
)

__all__ = ["Entry", "PinnedWorker", "WorkerPlacement", "pin_current_worker", "read_entries",
           "read_ts_config", "serve_in_foreground", "torchserve_workers", "worker_counts",
           "default_workers", "find_ts_config", "worker_models"]
