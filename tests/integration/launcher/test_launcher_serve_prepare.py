"""serve.prepare on this machine: what TorchServe would be started with."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchserve_cpu.launcher.errors import LauncherError
from torchserve_cpu.launcher.torchserve.properties import read_properties
from torchserve_cpu.launcher.torchserve.serve import derived_config_path, prepare


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


def test_prepare_shares_or_rejects_more_workers_than_cores(
    probe_store: Path, tmp_path: Path
) -> None:
    config = tmp_path / "config.properties"
    config.write_text("cpu_launcher_enable=true\ndefault_workers_per_model=3\n")
    shared = prepare(config, probe_store, ["probe.mar"], base_env={}).plan
    assert [b.cpus for b in shared.blocks] == [(0,), (1,), (0,)]  # the documented default
    assert any("room for 2" in note for note in shared.notes)
    config.write_text("cpu_launcher_enable=true\ndefault_workers_per_model=3\n"
                      "cpu_launcher_args=--oversubscribe refuse\n")
    with pytest.raises(LauncherError, match="3 workers at start .* --oversubscribe refuse"):
        prepare(config, probe_store, ["probe.mar"], base_env={})
