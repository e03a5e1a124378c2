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

The build runs in a child process of its own session that holds the lock with the worker
and outlives it: TorchServe kills a worker whose load passes `startupTimeout` (120 s by
default; a first int8 build on one busy core took 97-120 s), and the restarted worker then
waits for the build under way instead of starting it over (it was killed three times in a
row before: 6 minutes for a 33 s build). A failed build leaves `<key>.failed` with its
reason, so later workers do not retry it at every start.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
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
    usable = runtime.cpu_flags if runtime.onednn_flags is None else runtime.onednn_flags
    parts = [BUILDER, archive, repr(settings), runtime.torch, runtime.torch_git,
             " ".join(isa_flags(runtime.cpu_flags)),
             " ".join(isa_flags(usable))]  # under ONEDNN_MAX_CPU_ISA: 7-bit int8, its own
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class HostPackage:
    """Where the host's int8 package is (None: none could be built) and what happened."""

    folder: Path | None
    outcome: str  # "hit", "miss" (built now) or "failed"
    detail: str


#: the child that builds a package: this module run as a script (tests swap in a stand-in)
BUILDER_COMMAND = (sys.executable, "-m", "torchserve_cpu.handlers.archive.host_cache")
BUILD_LOG_MARK = " | build | "  # the builder's own log lines, relayed to the worker


def host_int8_package(model_dir: Path, manifest: Mapping[str, object],
                      handler_section: Mapping[str, object], settings: HandlerSettings,
                      root: Path | None = None,
                      builder: Sequence[str] | None = BUILDER_COMMAND) -> HostPackage:
    """The folder holding this archive's int8 package for this host, built on a miss.

    Building needs what `aot build` needs (torchao, a C++ compiler); a failure is returned,
    not raised: the worker then quantizes in-process as before. `builder`: the command of
    the child that builds (None: build in this process)."""
    started = time.perf_counter()
    key = host_key(archive_digest(model_dir), settings, Runtime.here())
    base = (root or cache_root()) / "int8"
    folder = base / key
    failed = base / f"{key}.failed"
    base.mkdir(parents=True, exist_ok=True)
    with (base / f"{key}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a build under way (its child holds it): wait
        if (folder / record_name("int8")).exists():
            return HostPackage(folder, "hit", f"{folder} ({time.perf_counter() - started:.2f}s)")
        if failed.exists():
            return HostPackage(None, "failed", f"an earlier build failed: "
                               f"{failed.read_text().strip()} (delete {failed} to try again)")
        log.warning("int8 host cache: building this host's int8 package of the archive "
                    "(first start on this host: 30-150 s; if it outlasts TorchServe's "
                    "startupTimeout the worker is restarted and waits for this build)")
        if builder is None:
            build_into(folder, model_dir, manifest, handler_section)
        else:
            build_in_child(builder, lock.fileno(), folder, model_dir, manifest,
                           handler_section)
    if failed.exists():
        return HostPackage(None, "failed", failed.read_text().strip())
    return HostPackage(folder, "miss",
                       f"built {folder} in {time.perf_counter() - started:.1f}s")


def build_in_child(builder: Sequence[str], lock_fd: int, folder: Path, model_dir: Path,
                   manifest: Mapping[str, object],
                   handler_section: Mapping[str, object]) -> None:
    """Run `build_into` in a child of its own session that inherits the held lock: killing
    the worker (TorchServe's startup timeout) neither stops the build nor frees the lock."""
    request = json.dumps({"folder": str(folder), "model_dir": str(model_dir),
                          "manifest": manifest, "handler": handler_section})
    with (folder.parent / f"{folder.name}.log").open("w") as output:
        child = subprocess.Popen([*builder, request], stdin=subprocess.DEVNULL, stdout=output,
                                 stderr=subprocess.STDOUT, pass_fds=(lock_fd,),
                                 start_new_session=True)
    code = child.wait()
    relay_build_log(folder.parent / f"{folder.name}.log")
    if code != 0 and not (folder / record_name("int8")).exists():
        failure = folder.parent / f"{folder.name}.failed"
        if not failure.exists():
            failure.write_text(f"the builder exited with {code}; its log: "
                               f"{folder.parent / f'{folder.name}.log'}\n")


def relay_build_log(path: Path) -> None:
    """The child's own lines (calibration, gate, sensitivity search) in the worker's log."""
    for line in path.read_text(errors="replace").splitlines():
        head, mark, message = line.partition(BUILD_LOG_MARK)
        if mark and " torchserve_cpu." in head:
            log.info("int8 host cache build: %s", message)


def build_into(folder: Path, model_dir: Path, manifest: Mapping[str, object],
               handler_section: Mapping[str, object]) -> None:
    """Build the int8 package into `folder` (complete, or not there at all); a failure is
    written to `<folder>.failed`, never raised."""
    base = folder.parent
    try:
        with tempfile.TemporaryDirectory(dir=base) as scratch:
            config = {"handler": {**handler_section, "dtype": "int8"}}
            if not build_packages(model_dir, manifest, config, Path(scratch), only=("int8",)):
                raise RuntimeError("the build made no int8 package")
            Path(scratch).rename(folder)
            folder.chmod(0o755)  # mkdtemp made it private
            Path(scratch).mkdir()  # for TemporaryDirectory's clean-up
    except Exception as error:  # noqa: BLE001 - any failure: the worker quantizes itself
        shutil.rmtree(folder, ignore_errors=True)
        (base / f"{folder.name}.failed").write_text(f"{type(error).__name__}: {error}\n")


def main(argv: Sequence[str]) -> int:
    """The builder child: argv[0] is build_in_child's JSON request."""
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s %(name)s{BUILD_LOG_MARK}%(message)s")
    request = json.loads(argv[0])
    build_into(Path(request["folder"]), Path(request["model_dir"]), request["manifest"],
               request["handler"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
