"""Core launcher: one disjoint block of physical cores per TorchServe worker."""
