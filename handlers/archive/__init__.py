"""Archive time: what is built before TorchServe ever loads the model (AOTInductor packages),
as TorchServe keeps its model archiver apart from the server."""

from torchserve_cpu.handlers.archive.aot_build import (
    build_from_files,
    build_packages,
    staged_archive,
)
from torchserve_cpu.handlers.archive.host_cache import HostPackage, host_int8_package

__all__ = ["HostPackage", "build_from_files", "build_packages", "host_int8_package",
           "staged_archive"]
