"""The `torchserve-cpu` command, every entry point of the package as a subcommand.

Exit codes (the only place exceptions become them): 0 done; 1 the command ran and found
problems (`doctor`, `aot inspect`, `check`) or the work failed (TorchServe did not start, a build
failed); 2 a usage or input mistake (a bad flag, config key or file), with a message naming it.
Subcommands that need torch import it when they run: `plan` and `doctor` stay fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from torchserve_cpu.launcher.host import (
    SysRoot,
    Topology,
    allowed_topology,
    read_lscpu,
    read_topology,
)
from torchserve_cpu.launcher.planning import ALLOCATORS, parse_launcher_args, plan, render_plan
from torchserve_cpu.launcher.torchserve import (
    default_workers,
    find_ts_config,
    read_ts_config,
    worker_counts,
    worker_models,
)


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
        "--ts-config", type=Path, help="take launcher args and worker counts from it "
        "(default without --workers: $TS_CONFIG_FILE, else ./config.properties)"
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
    add_aot_commands(commands)
    check = commands.add_parser(
        "check", help="what a worker would make of an archive; exit 1 listing every problem",
        description="Read an archive as TorchServe does, check its handler: keys, model file, "
        "weights, task and labels, then build the served model once on this machine.")
    check.add_argument("archive", type=Path,
                       help="a .mar, an unpacked archive, or a model folder (then give "
                       "--model-file and --serialized-file)")
    check.add_argument("--config-file", type=Path, help="model-config.yaml (default: the "
                       "archive's)")
    check.add_argument("--model-file", help="the model file, in the folder")
    check.add_argument("--serialized-file", help="the weights, in the folder")
    archives = commands.add_parser(
        "build-archives", help="build the demo model store's .mar files (the [demo] extra)")
    archives.add_argument("--models", nargs="+", help="default: all of them")
    archives.add_argument("--out", type=Path, default=Path("model_store") / "build")
    archives.add_argument("--aot", action="store_true",
                          help="handler.optimize: aot, with packages compiled now (15-40 s each)")
    archives.add_argument("--dtype", choices=["fp32", "bf16", "int8", "auto"], help="handler.dtype")
    return parser


def add_aot_commands(commands: argparse._SubParsersAction) -> None:
    aot = commands.add_parser("aot", help="AOTInductor packages: build | inspect")
    verbs = aot.add_subparsers(dest="aot_command", required=True)
    build = verbs.add_parser(
        "build", help="compile a model into aot-<dtype>.pt2 + .json",
        description="Compile a model ahead of time into aot-<dtype>.pt2 + .json for "
                    "torch-model-archiver --extra-files (handler.optimize: aot).")
    build.add_argument("--model-file", type=Path, required=True)
    build.add_argument("--serialized-file", type=Path, required=True,
                       help="the state dict (.pt or .safetensors)")
    build.add_argument("--config-file", type=Path, required=True, help="model-config.yaml")
    build.add_argument("--extra-files", default="",
                       help="comma-separated, as for the archiver (tokenizer.json ...)")
    build.add_argument("-o", "--out-dir", type=Path, default=Path("."))
    build.add_argument("--cache-dir", type=Path, help="reuse packages built before")
    inspect = verbs.add_parser("inspect", help="show a record; exit 1 if it cannot run here")
    inspect.add_argument("record", type=Path,
                         help="an aot-<dtype>.json, or a folder: every record in it")


def load_topology(path: Path | None) -> Topology:
    if path is None:
        return allowed_topology()
    if path.is_dir():
        return read_topology(SysRoot(path))
    return read_lscpu(path)


def run_plan(args: argparse.Namespace) -> int:
    """With no --workers, the config TorchServe would read ($TS_CONFIG_FILE, --ts-config,
    ./config.properties): its models at start, or one model registered later."""
    topology = load_topology(args.topology_file)
    config = None
    if args.ts_config is not None or args.workers is None:
        config = read_ts_config(find_ts_config(os.environ, args.ts_config, Path.cwd()))
    text = args.launcher_args if args.launcher_args is not None else None
    options = config.options if text is None and config is not None else parse_launcher_args(text)
    models: list[str] = []
    workers = args.workers
    if workers is None and config is not None:
        counts = worker_counts(config, len(topology.cpus))
        if not counts:  # nothing loaded at start: what one model registered later gets
            counts = {"(registered later)": default_workers(config, len(topology.cpus))}
        models = worker_models(counts)
        workers = len(models)
    result = plan(topology, options, workers)
    print(json.dumps(result.to_dict()) if args.json else render_plan(result, models))
    return 0


def run_doctor(args: argparse.Namespace) -> int:
    from torchserve_cpu.launcher.doctor import inspect, render

    report = inspect(frontend=args.frontend)
    print(render(report))
    return 1 if report.problems else 0


def run_serve(args: argparse.Namespace) -> int:
    from torchserve_cpu.launcher.torchserve import serve_in_foreground

    return serve_in_foreground(os.environ, args.ts_config, args.model_store, args.models,
                               list(args.torchserve_args))


def run_link_allocators(args: argparse.Namespace) -> int:
    from torchserve_cpu.launcher.planning import link_allocators, run_cpu_link_dir

    for line in link_allocators(args.dir or run_cpu_link_dir(os.environ)):
        print(line)
    return 0


def run_handler_path(args: argparse.Namespace) -> int:
    from torchserve_cpu.launcher.resources import HANDLER_FILE

    print(HANDLER_FILE)
    return 0


def run_metrics_config_path(args: argparse.Namespace) -> int:
    from torchserve_cpu.launcher.resources import METRICS_CONFIG

    print(METRICS_CONFIG)
    return 0


def run_aot(args: argparse.Namespace) -> int:
    if args.aot_command == "inspect":
        from torchserve_cpu.handlers.aot_package import inspect_record

        records = [args.record]
        if args.record.is_dir():
            records = sorted(args.record.glob("aot-*.json"))
            if not records:
                raise ValueError(f"{args.record}: a folder without aot-<dtype>.json records")
        failed = 0
        for record in records:
            summary, problems = inspect_record(record)
            print(json.dumps(summary, indent=1))
            print(f"{record.name}: " + ("runs here" if not problems else
                                        "cannot run here: " + "; ".join(problems)))
            failed += bool(problems)
        return 1 if failed else 0
    import yaml

    from torchserve_cpu.handlers.archive import build_from_files

    try:
        config = yaml.safe_load(args.config_file.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{args.config_file}: not YAML: {error}") from None
    built = build_from_files(args.model_file, args.serialized_file, config,
                             [Path(p) for p in args.extra_files.split(",") if p],
                             args.out_dir, args.cache_dir)
    for one in built:
        state = f"refused: {one.record.refused}" if one.record.refused else "ok"
        print(f"{one.record.dtype}: {state} {one.record.checked}")
    if (config.get("handler") or {}).get("optimize") != "aot":
        print("note: set `handler: optimize: aot` in model-config.yaml to serve them",
              file=sys.stderr)
    print(f"--extra-files {','.join(str(path) for one in built for path in one.files)}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from torchserve_cpu.handlers.check import check_path, render

    if args.config_file is not None and not args.config_file.is_file():
        raise FileNotFoundError(f"--config-file {args.config_file}: no such file")
    report = check_path(args.archive, args.config_file, args.model_file,
                        args.serialized_file)
    print(render(report, str(args.archive)))
    return 1 if report.problems else 0


def run_build_archives(args: argparse.Namespace) -> int:
    from torchserve_cpu.model_store.build import MODELS, build_archives

    unknown = sorted(set(args.models or ()) - set(MODELS))
    if unknown:
        raise ValueError(f"--models: unknown {unknown}; models are {', '.join(sorted(MODELS))}")
    for path in build_archives(args.models or sorted(MODELS), args.out, args.aot, args.dtype):
        print(f"built {path}")
    return 0


COMMANDS = {
    "plan": run_plan,
    "doctor": run_doctor,
    "serve": run_serve,
    "link-allocators": run_link_allocators,
    "handler-path": run_handler_path,
    "metrics-config-path": run_metrics_config_path,
    "aot": run_aot,
    "check": run_check,
    "build-archives": run_build_archives,
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
    except (ValueError, OSError) as error:  # LauncherError is a ValueError; yaml's errors too
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # serve.ServeError: TorchServe did not start; a failed build
        print(f"error: {error}", file=sys.stderr)
        return 1
