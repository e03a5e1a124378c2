"""The TorchServe side of the launcher: its config, its processes, the host-wide registry of
worker seats, the worker's pinning, `torchserve-cpu serve`, and applying a seat (the only
side effects)."""
