"""int8 for archives without a package: built once per host, not once per worker start.

An int8 archive without `aot-int8.pt2` used to be quantized by every worker at every start
(EfficientNet-Lite0: 22 s with 8-bit activations, 107-149 s with 7-bit and the
sensitivity search, benchmarks/results/precision/). Here the first worker on a host builds
the int8 AOTInductor package exactly as `torchserve-cpu aot build` would
(handlers.archive.aot_build) into `$TSCPU_CACHE_DIR/int8/<key>/` (default
~/.cache/torchserve-cpu), under a file lock so workers starting together build it once;
every later worker and restart loads it (a hit costs a hash of the archive's files).

The key: the archive's content (every unpacked file but TorchServe's MAR-INF, whose manifest
carries the archive's creation time), the handler settings, the torch build and this CPU's
ISA flags: another archive, setting, torch or CPU is another package.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from torchserve_cpu.handlers.aot_package import Runtime, isa_flags, record_name
from torchserve_cpu.handlers.archive.aot_build import BUILDER, build_packages
from torchserve_cpu.handlers.settings import HandlerSettings

log = logging.getLogger(__name__)

#: files of an unpacked archive that are not its content: TorchServe's manifest folder, our
#: packages (an archive with them never comes here) and load markers
SKIPPED = ("MAR-INF",)


def cache_root() -> Path:
    return Path(os.environ.get("TSCPU_CACHE_DIR") or Path.home() / ".cache" / "torchserve-cpu")


def archive_digest(model_dir: Path) -> str:
    """The unpacked archive's content: names and bytes of its files, in name order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(model_dir)
        if relative.parts[0] in SKIPPED or path.name.startswith("."):
            continue
        digest.update(f"{relative.as_posix()}\0".encode())
        with path.open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def host_key(archive: str, settings: HandlerSettings, runtime: Runtime) -> str:
    """Everything the cached package depends on (`archive`: archive_digest)."""
    parts = [BUILDER, archive, repr(settings), runtime.torch, runtime.torch_git,
             " ".join(isa_flags(runtime.cpu_flags))]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class HostPackage:
    """Where the host's int8 package is (None: none could be built) and what happened."""

    folder: Path | None
    outcome: str  # "hit", "miss" (built now) or "failed"
    detail: str


def host_int8_package(model_dir: Path, manifest: Mapping[str, object],
                      handler_section: Mapping[str, object], settings: HandlerSettings,
                      root: Path | None = None) -> HostPackage:
    """The folder holding this archive's int8 package for this host, built on a miss.

    Building needs what `aot build` needs (torchao, a C++ compiler); a failure is returned,
    not raised: the worker then quantizes in-process as before."""
    started = time.perf_counter()
    key = host_key(archive_digest(model_dir), settings, Runtime.here())
    base = (root or cache_root()) / "int8"
    folder = base / key
    base.mkdir(parents=True, exist_ok=True)
    with (base / f"{key}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a worker building it: the others wait, then hit
        if (folder / record_name("int8")).exists():
            return HostPackage(folder, "hit", f"{folder} ({time.perf_counter() - started:.2f}s)")
        try:
            with tempfile.TemporaryDirectory(dir=base) as scratch:
                config = {"handler": {**handler_section, "dtype": "int8"}}
                if not build_packages(model_dir, manifest, config, Path(scratch),
                                      only=("int8",)):
                    return HostPackage(None, "failed", "the build made no int8 package")
                Path(scratch).rename(folder)
                folder.chmod(0o755)  # mkdtemp made it private
                Path(scratch).mkdir()  # for TemporaryDirectory's clean-up
        except Exception as error:  # noqa: BLE001 - any failure: the worker quantizes itself
            shutil.rmtree(folder, ignore_errors=True)
            return HostPackage(None, "failed", f"{type(error).__name__}: {error}")
    return HostPackage(folder, "miss",
                       f"built {folder} in {time.perf_counter() - started:.1f}s")
