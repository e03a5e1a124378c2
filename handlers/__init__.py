"""Optimizing TorchServe handlers for CPUs."""
