"""`python -m launcher serve`: check the plan, preload the allocator, start TorchServe.

TorchServe gets a derived config with cpu_launcher_enable=false, so its own run_cpu
wrapper does not pin workers a second time; workers find the user's original config
through $TSCPU_CONFIG_FILE and pin themselves (launcher.worker).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from launcher.environment import AllocatorChoice, choose_allocator, process_env
from launcher.facts import allowed_topology
from launcher.planner import Plan, plan
from launcher.properties import write_properties
from launcher.tsconfig import ENABLE_KEY, model_entries, read_ts_config
from launcher.worker import CONFIG_ENV

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """Everything decided before TorchServe starts."""

    config_path: Path
    derived_properties: dict[str, str]
    env: dict[str, str]
    plan: Plan | None  # None when the config does not enable the launcher
    allocator: AllocatorChoice | None
    models: dict[str, int]


def prepare(
    ts_config: Path,
    model_store: Path,
    models: Sequence[str] = (),
    base_env: Mapping[str, str] | None = None,
) -> Prepared:
    """Validate config and plan up front; errors name the key or flag."""
    base = dict(os.environ if base_env is None else base_env)
    config = read_ts_config(Path(ts_config))
    topology = allowed_topology()
    entries = model_entries(config, len(topology.cpus), models, Path(model_store))
    counts = {entry.name: entry.workers for entry in entries}
    derived = dict(config.properties)
    derived[ENABLE_KEY] = "false"
    derived.setdefault("disable_token_authorization", "true")
    if not config.launcher_enabled:
        log.warning("%s=true is not set in %s: workers will not be pinned", ENABLE_KEY, ts_config)
        return Prepared(Path(ts_config), derived, {}, None, None, counts)
    the_plan = plan(topology, config.options, sum(counts.values()))
    allocator = choose_allocator(config.options)
    if allocator.path is None:
        log.info("launcher: allocator glibc (%s)", allocator.reason)
    env = process_env(config.options, allocator, base)
    env[CONFIG_ENV] = str(Path(ts_config).resolve())
    return Prepared(Path(ts_config), derived, env, the_plan, allocator, counts)


def derived_config_path(prepared: Prepared, run_dir: Path) -> Path:
    """Write the config TorchServe itself is started with."""
    path = run_dir / "launcher-derived.properties"
    write_properties(path, prepared.derived_properties)
    return path


def start(
    ts_config: Path,
    model_store: Path,
    models: Sequence[str] = (),
    run_dir: Path | None = None,
    extra_env: Mapping[str, str] | None = None,
):
    """Prepare, then start TorchServe through launcher.server; returns (handle, Prepared)."""
    from launcher import server  # the lead's module: process start/stop on loopback

    prepared = prepare(ts_config, model_store, models)
    run_dir = Path(run_dir or tempfile.mkdtemp(prefix="torchserve-cpu-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**prepared.env, **(extra_env or {})}
    handle = server.start(
        derived_config_path(prepared, run_dir), Path(model_store), models, env=env, run_dir=run_dir
    )
    return handle, prepared
