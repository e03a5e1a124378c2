"""Bring up one TorchServe for one (scenario, model, load): archive, config.properties, env.

Everything a run used is written into its run directory (config.properties, model-config
inside the .mar, env.json), and the driver copies those into the results as "the exact
configs used".
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from benchmarks.plan import Load, ModelCase, cores
from benchmarks.scenarios import (
    HANDLER_STOCK,
    LAUNCH_OURS,
    LAUNCH_TORCHSERVE,
    THREADS_ENV,
    Scenario,
)
from launcher.properties import parse_properties, write_properties
from launcher.server import TorchServe, start

STOCK_HANDLER = Path(__file__).resolve().parent / "stock_handler.py"

BASE_PROPERTIES = {
    # 0.12 turns token authorization on by default; ab cannot send the token.
    "disable_token_authorization": "true",
    "enable_envvars_config": "true",
}


@dataclass(frozen=True)
class Served:
    """A started server and what it was started with."""

    server: TorchServe
    model_name: str
    archive: Path
    properties: dict[str, str]
    env: dict[str, str]


def archive_for(scenario: Scenario, case: ModelCase, load: Load, out_dir: Path) -> Path:
    """The .mar this scenario serves: a ready archive as is, else built by model_store."""
    if case.archive is not None:
        return case.archive
    from model_store.build import build_archive  # imports torch; only needed here

    stock = scenario.handler == HANDLER_STOCK
    return build_archive(
        case.store_name,
        out_dir,
        handler_overrides=dict(scenario.handler_overrides) or None,
        handler_file=STOCK_HANDLER if stock else None,
        batch_size=case.batch_size,
        max_batch_delay_ms=load.batch_delay_ms,
        workers=load.workers,
        archive_name=f"{case.name}-{scenario.name}".replace("+", "-"),
    )


def properties_for(
    scenario: Scenario, load: Load, template: Mapping[str, str] | None = None
) -> dict[str, str]:
    """config.properties for the run: the user's template, then what the scenario needs."""
    properties = {**BASE_PROPERTIES, **(template or {})}
    properties["default_workers_per_model"] = str(load.workers)
    # TorchServe answers 503 once its queue is full; the queue must hold every client.
    properties["job_queue_size"] = str(max(int(properties.get("job_queue_size", 100)),
                                           2 * load.concurrency))
    if scenario.launch in (LAUNCH_TORCHSERVE, LAUNCH_OURS):
        properties["cpu_launcher_enable"] = "true"
        if scenario.launcher_args:
            properties["cpu_launcher_args"] = scenario.launcher_args
    return properties


def env_for(scenario: Scenario, load: Load) -> dict[str, str]:
    """Extra environment of the frontend (inherited by its workers)."""
    env: dict[str, str] = {}
    if scenario.set_threads:
        env[THREADS_ENV] = str(max(1, cores() // load.workers))
    if scenario.launch == LAUNCH_OURS:
        env.update(launcher_environment(scenario.launcher_args, load.workers))
    return env


def launcher_environment(launcher_args: str, workers: int) -> dict[str, str]:
    """The allocator environment our launcher sets (LD_PRELOAD, MALLOC_CONF), as data.

    Wiring point: launcher/environment.py exposes it once it lands; until then the
    scenarios that need it cannot run and say so.
    """
    try:
        from launcher import environment  # type: ignore[attr-defined]
    except ImportError as error:
        raise RuntimeError("launcher/environment.py is not there yet: "
                           "the pinned/optimized scenarios need it") from error
    return dict(environment.worker_environment(launcher_args, workers))


def read_template(path: Path | None) -> dict[str, str]:
    return parse_properties(path.read_text()) if path else {}


def start_served(
    scenario: Scenario, case: ModelCase, load: Load, run_dir: Path,
    archive_dir: Path, template: Mapping[str, str] | None = None, timeout_s: float = 600,
) -> Served:
    """Build (or take) the archive, start TorchServe on it and wait for every worker."""
    archive = archive_for(scenario, case, load, archive_dir)
    model_name = archive.stem
    properties = properties_for(scenario, load, template)
    env = env_for(scenario, load)
    run_dir.mkdir(parents=True, exist_ok=True)
    template_path = run_dir / "template.properties"
    write_properties(template_path, properties)
    (run_dir / "env.json").write_text(json.dumps(env, indent=2, sort_keys=True) + "\n")
    server = start(template_path, archive.parent, [f"{model_name}={archive.name}"],
                   env=env, run_dir=run_dir / "ts")
    try:
        server.wait_ready([model_name], timeout=timeout_s)
    except BaseException:
        server.stop()
        raise
    return Served(server, model_name, archive, properties, env)


def worker_environ(pid: int) -> dict[str, str]:
    """What a worker really runs with (LD_PRELOAD, MALLOC_CONF, OMP_*): evidence, not intent."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    keep = ("LD_PRELOAD", "MALLOC_CONF", "OMP_NUM_THREADS", "KMP_AFFINITY", THREADS_ENV)
    return {k.decode(): v.decode(errors="replace") for k, v in pairs if k.decode() in keep}


def loaded_allocator(pid: int) -> str:
    """Which malloc a process really mapped: jemalloc, tcmalloc or glibc."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return "unknown"
    for name in ("jemalloc", "tcmalloc"):
        if f"lib{name}" in maps:
            return name
    return "glibc"


def affinity(pid: int) -> str:
    try:
        return ",".join(str(c) for c in sorted(os.sched_getaffinity(pid)))
    except OSError:
        return ""
