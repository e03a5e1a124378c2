"""Is Intel Extension for PyTorch usable here? Decided once, with the reason logged.

IPEX only works with the torch minor version it was built for. With another torch its
import does not raise ImportError: 2.8.0 prints an error and calls `os.exit(127)`, which
raises AttributeError (seen with torch 2.13), so the import is guarded against any
exception and the reason names the installed IPEX and the running torch.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from types import ModuleType

import torch


@dataclass(frozen=True)
class IpexStatus:
    module: ModuleType | None
    reason: str

    @property
    def usable(self) -> bool:
        return self.module is not None


def _minor(version: str) -> tuple[str, ...]:
    return tuple(version.split("+")[0].split(".")[:2])


def _installed(distribution: str) -> str:
    """"; intel-extension-for-pytorch 2.8.0 installed, torch 2.13.0" (or "" if unknown).

    A failed import's own message says little (`module 'os' has no attribute 'exit'`):
    the two versions side by side say why."""
    try:
        version = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""
    return f"; {distribution} {version} installed, torch {torch.__version__}"


def probe_ipex(module_name: str = "intel_extension_for_pytorch",
               distribution: str = "intel-extension-for-pytorch") -> IpexStatus:
    """Import IPEX if it is installed and built for the running torch."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name:
            return IpexStatus(None, "not installed")
        return IpexStatus(None, f"import failed (ModuleNotFoundError: {error})"
                          f"{_installed(distribution)}")
    except (Exception, SystemExit) as error:  # noqa: BLE001 - any failure means "not usable"
        return IpexStatus(None, f"import failed ({type(error).__name__}: {error})"
                          f"{_installed(distribution)}")
    version = str(getattr(module, "__version__", "unknown"))
    if _minor(version) != _minor(torch.__version__):
        return IpexStatus(None, f"version {version} does not match torch {torch.__version__}")
    return IpexStatus(module, f"ipex {version}")
