"""pin_current_worker: called by the handler first thing in `initialize`.

Finds the config TorchServe was started with, plans ALL workers of ALL models from it
(every worker computes the same plan from the same facts), claims a block in the
host-wide registry and pins this process to it before any weight is loaded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from launcher import apply
from launcher.cpulist import format_cpulist
from launcher.environment import worker_env
from launcher.facts import allowed_topology
from launcher.planner import Block, Plan, plan
from launcher.procfs import Frontend, frontend_of, iomp_loaded, mapped_allocator, parent_pid
from launcher.procfs import start_time as process_start_time
from launcher.registry import Registry
from launcher.sysfs import SysRoot
from launcher.tsconfig import TsConfig, read_ts_config, worker_counts

log = logging.getLogger(__name__)

CONFIG_ENV = "TSCPU_CONFIG_FILE"  # set by `python -m launcher serve`: the user's config


@dataclass(frozen=True)
class WorkerPlacement:
    """Where this worker runs, as applied (allocator as mapped, not as asked)."""

    model: str
    block: int
    cpus: tuple[int, ...]
    node: int | None
    threads: int
    allocator: str
    memory_policy: str
    plan_key: str

    def describe(self) -> str:
        """One log line: what a reader of model_log.log needs to check the pinning."""
        node = "-" if self.node is None else str(self.node)
        return (
            f"cores={format_cpulist(self.cpus)} node={node} threads={self.threads} "
            f"allocator={self.allocator}"
        )


def find_config(environ: Mapping[str, str], frontend: Frontend | None) -> tuple[Path | None, str]:
    """The config file and where its name came from, in the documented order."""
    for name in (CONFIG_ENV, "TS_CONFIG_FILE"):
        if environ.get(name):
            return Path(environ[name]), f"${name}"
    if frontend is not None and frontend.config is not None:
        return frontend.config, f"-f of TorchServe frontend pid {frontend.pid}"
    return None, ""


def worker_plan(
    config: TsConfig, frontend: Frontend | None, sys_root: SysRoot | None = None
) -> tuple[Plan, dict[str, int]]:
    """The plan every worker of this TorchServe instance computes identically, and the
    worker counts per model it was made for."""
    fs = sys_root or SysRoot()
    owner = frontend.pid if frontend else (parent_pid("self", fs) or "self")
    topology = allowed_topology(owner, fs)
    counts = worker_counts(
        config,
        len(topology.cpus),
        cli_models=frontend.models if frontend else (),
        model_store=frontend.model_store if frontend else None,
    )
    return plan(topology, config.options, sum(counts.values())), counts


def pin_current_worker(
    model_name: str,
    environ: Mapping[str, str] | None = None,
    sys_root: SysRoot | None = None,
) -> WorkerPlacement | None:
    """Pin this worker to its block; None (logged) when no launcher config is in effect.

    Raises LauncherError, naming the key or flag, when the config is wrong.
    """
    environ = os.environ if environ is None else environ
    fs = sys_root or SysRoot()
    frontend = frontend_of("self", fs)
    path, source = find_config(environ, frontend)
    if path is None:
        log.info(
            "launcher: no TorchServe config found (%s, TS_CONFIG_FILE, -f): not pinned", CONFIG_ENV
        )
        return None
    config = read_ts_config(path)
    if not config.launcher_enabled:
        log.info("launcher: cpu_launcher_enable is not true in %s (%s): not pinned", path, source)
        return None
    the_plan, counts = worker_plan(config, frontend, fs)
    if model_name not in counts:
        log.warning(
            "launcher: model %r is not among the models in %s (%s); claiming a spare block",
            model_name,
            path,
            ", ".join(counts) or "none",
        )
    pid = os.getpid()
    started = process_start_time("self", fs)
    registry = Registry(the_plan.key(), [b.cpus for b in the_plan.blocks])
    index = registry.claim(pid, started if started is not None else 0, model_name)
    block = the_plan.blocks[index]
    placement = _apply(model_name, block, the_plan, config, fs)
    log.info("launcher: %s worker %s: %s", model_name, pid, placement.describe())
    return placement


def _apply(
    model: str, block: Block, the_plan: Plan, config: TsConfig, fs: SysRoot
) -> WorkerPlacement:
    options = config.options
    if options.bind_cpus:
        apply.pin_threads(block.cpus, fs)
    memory = "not bound (--disable_numactl)" if not options.bind_memory else _bind(block, fs)
    apply.set_environ(worker_env(block, iomp_loaded("self", fs)))
    threads = apply.set_torch_threads(block.threads) or block.threads
    return WorkerPlacement(
        model=model,
        block=block.index,
        cpus=block.cpus,
        node=block.node,
        threads=threads,
        allocator=mapped_allocator("self", fs),
        memory_policy=memory,
        plan_key=the_plan.key(),
    )


def _bind(block: Block, fs: SysRoot) -> str:
    if block.node is None:
        return "not bound (block spans nodes or node unknown)"
    with_memory = apply.nodes_with_memory(fs)
    if with_memory is not None and block.node not in with_memory:
        return f"not bound (node {block.node} has no memory)"
    problem = apply.bind_memory(block.node)
    if problem:
        log.warning("launcher: %s; memory policy left as is", problem)
        return f"not bound ({problem})"
    return f"bound to node {block.node}"
