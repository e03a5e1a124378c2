"""Bring up one TorchServe for one (scenario, model, load): archive, config.properties, env.

Everything a run used is written into its run directory (config.properties, model-config
inside the .mar, env.json), and the driver copies those into the results as "the exact
configs used".
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from benchmarks.loopback_torchserve import TorchServe, start, start_with_launcher, write_properties
from benchmarks.plan import Load, ModelCase, cores
from benchmarks.scenarios import (
    HANDLER_STOCK,
    LAUNCH_OURS,
    LAUNCH_TORCHSERVE,
    Scenario,
)
from benchmarks.stock_handler import THREADS_ENV
from torchserve_cpu.handlers.served_record import ServedRecord, read_records
from torchserve_cpu.launcher.planning.allocators import mapped_allocator
from torchserve_cpu.launcher.torchserve.properties import parse_properties

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
    from torchserve_cpu.model_store.build import build_archive  # imports torch; only needed here

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
    if scenario.register_later:
        properties["enable_model_api"] = "true"  # 0.12 refuses registration otherwise
    if scenario.launch in (LAUNCH_TORCHSERVE, LAUNCH_OURS):
        properties["cpu_launcher_enable"] = "true"
        if scenario.launcher_args:
            properties["cpu_launcher_args"] = scenario.launcher_args
    return properties


def env_for(scenario: Scenario, load: Load) -> dict[str, str]:
    """Extra environment of the frontend (inherited by its workers); our launcher adds its
    own (allocator preload, MALLOC_CONF, its config path) in `start_served`."""
    env: dict[str, str] = {}
    if scenario.set_threads:
        env[THREADS_ENV] = str(max(1, cores() // load.workers))
    return env


def read_template(path: Path | None) -> dict[str, str]:
    return parse_properties(path.read_text()) if path else {}


def start_served(
    scenario: Scenario, case: ModelCase, load: Load, run_dir: Path, ts_dir: Path,
    archive_dir: Path, template: Mapping[str, str] | None = None, timeout_s: float = 600,
) -> Served:
    """Build (or take) the archive, start TorchServe on it and wait for every worker.

    `run_dir` keeps what the run used; `ts_dir` is TorchServe's own (TEMP, logs) and must have
    a short path: workers put their AF_UNIX sockets in TEMP, limited to 108 bytes (unix(7))."""
    archive = archive_for(scenario, case, load, archive_dir)
    model_name = archive.stem
    properties = properties_for(scenario, load, template)
    env = env_for(scenario, load)
    run_dir.mkdir(parents=True, exist_ok=True)
    template_path = run_dir / "template.properties"
    write_properties(template_path, properties)
    models = [] if scenario.register_later else [f"{model_name}={archive.name}"]
    if scenario.launch == LAUNCH_OURS:
        # The launcher's serve path: plan checked, allocator preloaded, workers pin themselves.
        server, prepared = start_with_launcher(template_path, archive.parent, models,
                                               run_dir=ts_dir, extra_env=env)
        env = {**prepared.env, **env}
    else:
        server = start(template_path, archive.parent, models, env=env, run_dir=ts_dir)
    (run_dir / "env.json").write_text(json.dumps(env, indent=2, sort_keys=True) + "\n")
    try:
        if scenario.register_later:
            register(server, archive.name, model_name, load.workers, timeout_s)
        server.wait_ready([model_name], timeout=timeout_s)
    except BaseException:
        server.stop()
        raise
    return Served(server, model_name, archive, properties, env)


def register(server: TorchServe, archive: str, name: str, workers: int, timeout_s: float) -> None:
    """Register through the management API, as TorchServe's own benchmark tool does."""
    query = urllib.parse.urlencode({"url": archive, "model_name": name,
                                    "initial_workers": workers, "synchronous": "true"})
    deadline = time.monotonic() + 60
    while True:  # the management API answers a few seconds after `torchserve --start`
        try:
            request = urllib.request.Request(f"{server.management_url}/models?{query}",
                                             method="POST")
            with urllib.request.urlopen(request, timeout=timeout_s):
                return
        except urllib.error.URLError as error:
            if isinstance(error, urllib.error.HTTPError) or time.monotonic() > deadline:
                raise RuntimeError(f"registering {archive}: {error}") from error
            time.sleep(0.5)


def loaded_allocator(pid: int) -> str:
    """Which malloc a process really mapped (launcher.allocators names), or "unknown"."""
    return mapped_allocator(pid) or "unknown"


def affinity(pid: int) -> str:
    try:
        return ",".join(str(c) for c in sorted(os.sched_getaffinity(pid)))
    except OSError:
        return ""


def served_record(log_text: str, model_name: str) -> ServedRecord | None:
    """What our handler's first worker of `model_name` reports it serves (its served-model
    record): the pipeline and dtype it really runs after its accuracy gate (a bf16 request
    may come back fp32). None for other handlers."""
    return next((record for record in read_records(log_text) if record.model == model_name),
                None)
