"""The `torchserve-cpu` command: plan | doctor | serve | link-allocators | handler-path |
metrics-config-path."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from torchserve_cpu.launcher.errors import LauncherError
from torchserve_cpu.launcher.host import (
    SysRoot,
    Topology,
    allowed_topology,
    format_cpulist,
    read_lscpu,
    read_topology,
)
from torchserve_cpu.launcher.planning.allocators import ALLOCATORS
from torchserve_cpu.launcher.planning.options import parse_launcher_args
from torchserve_cpu.launcher.planning.planner import Plan, plan
from torchserve_cpu.launcher.torchserve.tsconfig import read_ts_config, worker_counts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torchserve-cpu", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    planning = commands.add_parser("plan", help="show the core blocks workers would get")
    planning.add_argument(
        "--topology-file",
        type=Path,
        help="saved `lscpu --parse=CPU,Core,Socket,Node` output, or a folder holding a "
        "saved sys/ tree; default: this machine within this process's cpuset",
    )
    planning.add_argument("--workers", type=int, help="total workers of all models")
    planning.add_argument("--launcher-args", default=None, help="cpu_launcher_args text")
    planning.add_argument(
        "--ts-config", type=Path, help="take launcher args and worker counts from it"
    )
    planning.add_argument("--json", action="store_true", help="machine-readable output")
    doctor = commands.add_parser("doctor", help="check the running TorchServe workers")
    doctor.add_argument("--frontend", type=int, help="only workers of this TorchServe pid")
    links = commands.add_parser(
        "link-allocators",
        help="let TorchServe's run_cpu wrapper find "
        + "/".join(entry.name for entry in ALLOCATORS if entry.run_cpu_file)
        + " (plain torchserve --start)",
    )
    links.add_argument("--dir", type=Path, help="default: $VIRTUAL_ENV/lib, else ~/.local/lib")
    commands.add_parser(
        "handler-path",
        help="print the installed handler file, for torch-model-archiver --handler",
    )
    commands.add_parser(
        "metrics-config-path",
        help="print the metrics config declaring the handler's metrics, for metrics_config= "
        "in config.properties (serve uses it when the config names none)",
    )
    serving = commands.add_parser(
        "serve",
        help="run TorchServe in the foreground with pinned workers",
        description="Run TorchServe until SIGTERM or SIGINT, workers pinned by the launcher; "
        "exit with TorchServe's status. Other arguments go to torchserve as they are.",
    )
    serving.add_argument(
        "--ts-config", type=Path,
        help="used when $TS_CONFIG_FILE is not set; default ./config.properties",
    )
    serving.add_argument("--model-store", type=Path, help="default: model_store in the config")
    serving.add_argument("--models", nargs="+", default=[])
    serving.set_defaults(torchserve_args=[])  # takes the arguments it does not know
    return parser


def load_topology(path: Path | None) -> Topology:
    if path is None:
        return allowed_topology()
    if path.is_dir():
        return read_topology(SysRoot(path))
    return read_lscpu(path)


def run_plan(args: argparse.Namespace) -> int:
    topology = load_topology(args.topology_file)
    config = read_ts_config(args.ts_config) if args.ts_config else None
    text = args.launcher_args if args.launcher_args is not None else None
    if text is None and config is not None:
        options = config.options
    else:
        options = parse_launcher_args(text)
    workers = args.workers
    if workers is None:
        if config is None:
            raise LauncherError("plan: give --workers N or --ts-config FILE")
        workers = sum(worker_counts(config, len(topology.cpus)).values())
    result = plan(topology, options, workers)
    print(json.dumps(result.to_dict()) if args.json else render_plan(result))
    return 0


def render_plan(result: Plan) -> str:
    lines = [f"{'worker':>6}  {'node':>4}  {'threads':>7}  cpus"]
    for block in result.blocks:
        node = "-" if block.node is None else str(block.node)
        lines.append(
            f"{block.index:>6}  {node:>4}  {block.threads:>7}  {format_cpulist(block.cpus)}"
        )
    lines.append(f"leftover: {format_cpulist(result.leftover) or 'none'}")
    lines += [f"note: {note}" for note in result.notes]
    return "\n".join(lines)


def run_doctor(args: argparse.Namespace) -> int:
    from torchserve_cpu.launcher.doctor import inspect, render

    report = inspect(frontend=args.frontend)
    print(render(report))
    return 1 if report.problems else 0


def run_serve(args: argparse.Namespace) -> int:
    from torchserve_cpu.launcher.torchserve import serve

    config = serve.find_ts_config(os.environ, args.ts_config, Path.cwd())
    store = serve.find_model_store(config, args.model_store)
    prepared = serve.prepare(config, store, args.models)
    if prepared.plan is not None:
        print(render_plan(prepared.plan))
        print(f"allocator: {prepared.allocator.name} ({prepared.allocator.reason})")
    torchserve_args = list(args.torchserve_args)
    if args.model_store is not None:
        torchserve_args += ["--model-store", str(args.model_store)]
    if args.models:
        torchserve_args += ["--models", *args.models]
    return serve.run(prepared, torchserve_args)


def run_link_allocators(args: argparse.Namespace) -> int:
    from torchserve_cpu.launcher.planning.environment import link_allocators, run_cpu_link_dir

    for line in link_allocators(args.dir or run_cpu_link_dir(os.environ)):
        print(line)
    return 0


def run_handler_path(args: argparse.Namespace) -> int:
    from torchserve_cpu.handlers import HANDLER_FILE

    print(HANDLER_FILE)
    return 0


def run_metrics_config_path(args: argparse.Namespace) -> int:
    from torchserve_cpu.handlers import METRICS_CONFIG

    print(METRICS_CONFIG)
    return 0


COMMANDS = {
    "plan": run_plan,
    "doctor": run_doctor,
    "serve": run_serve,
    "link-allocators": run_link_allocators,
    "handler-path": run_handler_path,
    "metrics-config-path": run_metrics_config_path,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point; the only place exceptions become exit codes."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not hasattr(args, "torchserve_args"):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if unknown:
        args.torchserve_args = unknown
    try:
        return COMMANDS[args.command](args)
    except LauncherError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # serve.ServeError: TorchServe did not start
        print(f"error: {error}", file=sys.stderr)
        return 1
