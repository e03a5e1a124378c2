"""Build and read the test ITT collector (tests/support/itt_collector.c).

Why: torch.profiler.itt calls are silent no-ops unless an ITT collector is loaded, so the
only way to prove a range was emitted is to load our own collector into the process under
test (through INTEL_LIBITTNOTIFY64, as VTune does) and read what it logged.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

COLLECTOR_SOURCE = Path(__file__).with_name("itt_collector.c")
LIB_ENV = "INTEL_LIBITTNOTIFY64"
LOG_ENV = "ITT_COLLECTOR_LOG"
DOMAIN_ENV = "ITT_COLLECTOR_DOMAIN"
TORCH_DOMAIN = "PyTorch"
GCC_FLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Wextra")


def build_itt_collector(out_dir: Path) -> Path:
    """Compile the collector into out_dir and return the .so path.

    Built per test session (not shipped) so it always matches this machine's libc and gcc.
    Raises FileNotFoundError if gcc is missing, RuntimeError (with gcc's output) if the
    build fails.
    """
    gcc = shutil.which("gcc")
    if gcc is None:
        raise FileNotFoundError("gcc not found on PATH; needed to build the ITT collector")
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / "libitt_collector.so"
    cmd = [gcc, *GCC_FLAGS, "-o", str(lib), str(COLLECTOR_SOURCE), "-ldl", "-lpthread"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building the ITT collector failed: {' '.join(cmd)}\n{proc.stderr}")
    return lib


def itt_env(
    lib: Path,
    log: Path,
    *,
    domain: str | None = None,
    base: dict[str, str] | None = None,
) -> dict[str, str]:
    """Environment for a child process whose ITT events should land in `log`.

    Starts from `base` (default: this process's environment). `domain` keeps only that ITT
    domain's events, e.g. TORCH_DOMAIN to drop oneDNN's own primitive tasks.
    """
    env = dict(os.environ if base is None else base)
    env[LIB_ENV] = str(lib)
    env[LOG_ENV] = str(log)
    if domain is None:
        env.pop(DOMAIN_ENV, None)
    else:
        env[DOMAIN_ENV] = domain
    return env


def read_itt_events(log: Path) -> list[tuple[str, str]]:
    """The logged events in order as (kind, name): ("begin", name), ("end", "") or
    ("error", message). A missing log means the collector was never loaded: no events."""
    if not log.exists():
        return []
    events: list[tuple[str, str]] = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        kind, _, name = line.partition(" ")
        events.append((kind, name))
    return events
