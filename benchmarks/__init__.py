"""Apache-bench runs of TorchServe on CPUs, scenario by scenario, against the machine's limit."""
