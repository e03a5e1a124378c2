"""serve.prepare on this machine: what TorchServe would be started with."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.errors import LauncherError
from launcher.properties import read_properties
from launcher.serve import derived_config_path, prepare


def test_prepare_sets_allocator_and_disables_run_cpu(probe_store: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.properties"
    config.write_text("cpu_launcher_enable=true\ndefault_workers_per_model=2\n")
    prepared = prepare(config, probe_store, ["probe.mar"], base_env={})
    assert prepared.models == {"probe": 2}
    assert prepared.env["LD_PRELOAD"] == "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4"
    assert prepared.env["TSCPU_CONFIG_FILE"] == str(config.resolve())
    assert "MALLOC_CONF" not in prepared.env
    derived = read_properties(derived_config_path(prepared, tmp_path))
    assert derived["cpu_launcher_enable"] == "false"


def test_prepare_rejects_a_plan_that_cannot_work(probe_store: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.properties"
    config.write_text("cpu_launcher_enable=true\ndefault_workers_per_model=3\n")
    with pytest.raises(LauncherError, match="3 workers need at least 3 physical cores"):
        prepare(config, probe_store, ["probe.mar"], base_env={})
