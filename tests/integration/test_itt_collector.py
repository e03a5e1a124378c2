"""Prove torch.profiler.itt ranges reach an ITT collector, not just a no-op stub.

Each case runs a fresh interpreter: libittnotify reads INTEL_LIBITTNOTIFY64 once per
process, so the collector can only be attached at start-up.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.support.itt import LIB_ENV, TORCH_DOMAIN, itt_env, read_itt_events

pytestmark = pytest.mark.integration

VENV_PYTHON = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "python"

RANGES_SCRIPT = textwrap.dedent(
    """
    import torch.profiler.itt as itt

    assert itt.is_available(), "torch build has no ITT support"
    itt.range_push("demo.preprocess")
    itt.range_pop()
    with itt.range("x"):
        pass
    """
)


def run_python(script: str, env: dict[str, str]) -> None:
    """Run `script` in the venv interpreter; fail with its stderr if it fails."""
    if not VENV_PYTHON.exists():
        pytest.skip(f"venv interpreter missing: {VENV_PYTHON}")
    proc = subprocess.run(
        [str(VENV_PYTHON), "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr


def test_itt_is_available() -> None:
    """The CPU wheel must be built with ITT, else every other check here is moot."""
    env = {k: v for k, v in os.environ.items() if k != LIB_ENV}
    run_python("import torch.profiler.itt as itt; assert itt.is_available()", env)


def test_ranges_reach_collector(itt_collector: Path, tmp_path: Path) -> None:
    """range_push/range_pop and the range() context manager arrive in order, by name."""
    log = tmp_path / "itt.log"
    run_python(RANGES_SCRIPT, itt_env(itt_collector, log))
    assert read_itt_events(log) == [
        ("begin", "demo.preprocess"),
        ("end", ""),
        ("begin", "x"),
        ("end", ""),
    ]


def test_emit_itt_reports_aten_ops(itt_collector: Path, tmp_path: Path) -> None:
    """emit_itt turns each dispatched op into a balanced ITT range in the PyTorch domain."""
    log = tmp_path / "itt.log"
    script = textwrap.dedent(
        """
        import torch

        x = torch.ones(2)
        with torch.autograd.profiler.emit_itt():
            torch.add(x, 1)
        """
    )
    run_python(script, itt_env(itt_collector, log, domain=TORCH_DOMAIN))
    events = read_itt_events(log)
    assert ("begin", "aten::add") in events
    assert sum(kind == "begin" for kind, _ in events) == sum(kind == "end" for kind, _ in events)


def test_domain_filter_drops_other_domains(itt_collector: Path, tmp_path: Path) -> None:
    """Events outside the requested domain are dropped, so callers can ignore oneDNN."""
    log = tmp_path / "itt.log"
    run_python(RANGES_SCRIPT, itt_env(itt_collector, log, domain="not-" + TORCH_DOMAIN))
    assert read_itt_events(log) == []
    assert log.exists(), "collector should still have been loaded and opened its log"


def test_no_collector_without_env(itt_collector: Path, tmp_path: Path) -> None:
    """Without INTEL_LIBITTNOTIFY64 the collector is never loaded and nothing is logged."""
    log = tmp_path / "itt.log"
    env = itt_env(itt_collector, log)
    del env[LIB_ENV]
    run_python(RANGES_SCRIPT, env)
    assert not log.exists()
    assert read_itt_events(log) == []
