"""Optimizing TorchServe handlers for CPUs: the TorchServe contract here (handler, envelopes,
settings, metrics, served record), building the served model in `optimize/`, archive-time
work in `archive/`, tasks (pre- and post-processing) in `tasks/`."""
