"""Pure decisions: launcher options, core blocks per worker, re-balancing, allocator and
environment per worker. Reads no file: facts come in as `launcher.host` data."""

from torchserve_cpu.launcher.planning.allocators import ALLOCATORS, PRELOAD_FIX, mapped_allocator
from torchserve_cpu.launcher.planning.balance import Demand, Pool, WorkerKey, assign
from torchserve_cpu.launcher.planning.environment import (
    AllocatorChoice,
    choose_allocator,
    late_env,
    link_allocators,
    process_env,
    run_cpu_link_dir,
    worker_env,
)
from torchserve_cpu.launcher.planning.options import LauncherOptions, parse_launcher_args
from torchserve_cpu.launcher.planning.planner import Plan, plan, render_plan

__all__ = [
    "ALLOCATORS", "PRELOAD_FIX", "AllocatorChoice", "Demand", "LauncherOptions", "Plan", "Pool",
    "WorkerKey", "assign", "choose_allocator", "late_env", "link_allocators", "mapped_allocator",
    "parse_launcher_args", "plan", "process_env", "render_plan", "run_cpu_link_dir", "worker_env",
]
