"""Facts about the machine a result set came from, for machine.json."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket

import psutil

from torchserve_cpu.launcher.host import capabilities, this_cpu
from torchserve_cpu.launcher.host.cpulist import format_cpulist
from torchserve_cpu.launcher.host.procfs import cpuinfo
from torchserve_cpu.launcher.host.sysfs import node_cpus

#: The flags that decide which kernels run (the rest of /proc/cpuinfo's list is noise here).
INTERESTING_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                     "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")


def numa_nodes() -> dict[str, str]:
    """NUMA node -> its cpulist ({} where the kernel shows no nodes)."""
    return {f"node{node}": format_cpulist(cpus) for node, cpus in node_cpus().items()}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_facts() -> dict[str, object]:
    import torch

    info = cpuinfo()
    flags = set(info.get("flags", "").split())
    cpu = this_cpu()
    found = capabilities(cpu)
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    return {
        "hostname": socket.gethostname(),
        "cpu_model": info.get("model name"),
        "cpu_mhz_reported": info.get("cpu MHz"),
        "logical_cpus": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "allowed_cpus": sorted(os.sched_getaffinity(0)),
        "numa_nodes": numa_nodes(),
        "flags": [flag for flag in INTERESTING_FLAGS if flag in flags],
        "cpu_flags_all": sorted(cpu.flags),
        # what the handler's precision decision reads (handlers.optimize.precision)
        "native_bf16": list(found.bf16_flags),
        "int8_dot_products": list(found.int8_dot_flags),
        "int8_7bit_activations": found.int8_saturating,
        "torch_cpu_capabilities": dict(get_capabilities()) if get_capabilities else None,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torchserve": _version("torchserve"),
        "torch_model_archiver": _version("torch-model-archiver"),
        "intel_extension_for_pytorch": _version("intel_extension_for_pytorch"),
        "load_average_at_start": os.getloadavg(),
    }
