"""`python -m benchmarks run ...`: the only place that turns errors into exit codes."""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from benchmarks import plan
from benchmarks.driver import RESULTS, RunSettings, run
from benchmarks.scenarios import SCENARIOS, select
from benchmarks.serving import read_template

QUICK_SCENARIOS = ("stock", "threads", "torchserve-launcher", "pinned", "optimized")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the scenario matrix and write a result set")
    p.add_argument("--scenarios", nargs="+", metavar="NAME",
                   help=f"default: all ({', '.join(SCENARIOS)}); quick: a subset")
    p.add_argument("--models", nargs="+", metavar="NAME",
                   help=f"model cases ({', '.join(plan.MODEL_CASES)}); quick: resnet50")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="few requests, few scenarios, short references: minutes on 2 cores")
    mode.add_argument("--preset", choices=sorted(plan.PRESETS),
                      help="the tutorials' loads (long: 10k requests)")
    p.add_argument("--archive", type=Path,
                   help="serve this ready .mar in every scenario instead of building models")
    p.add_argument("--input", type=Path, help="request body for --archive")
    p.add_argument("--content-type", default="image/jpeg", help="of --input")
    p.add_argument("--batch-size", type=int, help="server-side batch size (all models)")
    p.add_argument("--batch-delay", type=int, help="max batch delay, ms")
    p.add_argument("--workers", type=int)
    p.add_argument("--concurrency", "-c", type=int)
    p.add_argument("--requests", "-n", type=int)
    p.add_argument("--ts-config", type=Path, help="config.properties template")
    p.add_argument("--raw-seconds", type=float, help="length of each raw-loop reference")
    p.add_argument("--no-references", action="store_true",
                   help="skip peak GFLOP/s, FLOP count and raw loop")
    p.add_argument("--out", type=Path, default=RESULTS, help="results root")
    return top


def settings_from(args: argparse.Namespace) -> RunSettings:
    """One frozen settings object from the command line (ValueError on bad combinations)."""
    if shutil.which("ab") is None:
        raise ValueError("apache-bench (ab) is not on PATH: apt-get install apache2-utils")
    batch = args.batch_size
    if args.preset:
        load, preset_batch = plan.PRESETS[args.preset]
        batch = batch or preset_batch
    else:
        load = plan.QUICK_LOAD if args.quick else plan.DEFAULT_LOAD
    load = replace(
        load,
        workers=args.workers or load.workers,
        concurrency=args.concurrency or load.concurrency,
        requests=args.requests or load.requests,
        batch_delay_ms=args.batch_delay if args.batch_delay is not None else load.batch_delay_ms,
    )
    if args.archive:
        if not args.input:
            raise ValueError("--archive needs --input FILE (the request body to post)")
        cases = [plan.ModelCase(args.archive.stem, "", batch or 1, args.input.resolve(),
                                args.content_type, archive=args.archive.resolve())]
    else:
        models = args.models or (["resnet50"] if args.quick else None)
        cases = plan.select_models(models, batch)
    names = args.scenarios or (list(QUICK_SCENARIOS) if args.quick else None)
    return RunSettings(
        scenarios=select(names),
        cases=cases,
        load=load,
        quick=args.quick,
        references=not args.no_references,
        raw_seconds=args.raw_seconds or (2.0 if args.quick else 10.0),
        out_root=args.out,
        template=read_template(args.ts_config),
        label=args.preset or ("quick" if args.quick else "default"),
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = settings_from(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        out = run(settings)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(out)
    return 0
