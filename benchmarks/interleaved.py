"""Served throughput of pipelines side by side, interleaved in time: for a shared, noisy
machine, where rows measured minutes apart see different background load.

One TorchServe (plain, no launcher) holds one worker per (pipeline, dtype) archive, all
registered with the same batch size; ab -k bursts go to each in turn, round after round
(the order reversed every other round), so background load falls on every pipeline
alike. Only one model is busy at a time and its worker uses every core. Reported: the
median items/s per pipeline and the median of the per-round ratios to the first pipeline.

    python -m benchmarks.interleaved [--model resnet50] [--pipelines default aot]
        [--dtypes fp32 bf16] [--batch-sizes 1 8] [--rounds 5] [--requests 80]
        [--out benchmarks/results/<date>-aot]

Writes interleaved.json and interleaved.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import statistics
import tempfile
import urllib.parse
from pathlib import Path

from benchmarks.ab import AbLoad, run_ab
from benchmarks.coldstart import management, wait_management
from benchmarks.loopback_torchserve import TorchServe, start, write_properties
from benchmarks.plan import MODEL_CASES
from torchserve_cpu.handlers.served_record import read_records
from torchserve_cpu.model_store.build import build_archive

RESULTS = Path(__file__).resolve().parent / "results"


def register(server: TorchServe, archive: Path, name: str, batch: int) -> None:
    query = urllib.parse.urlencode({"url": archive.name, "model_name": name,
                                    "initial_workers": 1, "batch_size": batch,
                                    "max_batch_delay": 50,
                                    "response_timeout": 900, "startup_timeout": 900,
                                    "synchronous": "true"})
    management(server, "POST", f"/models?{query}")


def measure(args: argparse.Namespace, work: Path) -> list[dict]:
    case = MODEL_CASES[args.model]
    archives = {(p, d): build_archive(case.store_name, work / "store", workers=1,
                                      archive_name=f"{p}-{d}",
                                      handler_overrides={"optimize": p, "dtype": d})
                for d in args.dtypes for p in args.pipelines}
    config = work / "config.properties"
    write_properties(config, {"enable_model_api": "true", "disable_token_authorization": "true",
                              "default_workers_per_model": "1", "job_queue_size": "200"})
    server = start(config, work / "store", [], run_dir=work / "ts")
    wait_management(server)
    rows = []
    try:
        for batch in args.batch_sizes:
            names = {key: f"{key[0]}-{key[1]}-b{batch}" for key in archives}
            for key, archive in archives.items():
                register(server, archive, names[key], batch)
            records = {r.model: r for r in read_records(
                (server.log_dir / "model_log.log").read_text())}
            rates: dict[tuple[str, str], list[float]] = {key: [] for key in archives}
            for key in archives:  # warm-up, not recorded
                run_ab(AbLoad(f"{server.inference_url}/predictions/{names[key]}",
                              case.input_file, case.content_type, 2 * batch, 4 * batch))
            for round_ in range(args.rounds):
                order = list(archives) if round_ % 2 == 0 else list(reversed(archives))
                for key in order:
                    load = AbLoad(f"{server.inference_url}/predictions/{names[key]}",
                                  case.input_file, case.content_type,
                                  concurrency=2 * batch, requests=args.requests)
                    result = run_ab(load)
                    if result.errors:
                        raise RuntimeError(f"{names[key]}: {result.errors} errors")
                    rates[key].append(result.requests_per_s)
                    print(names[key], round(result.requests_per_s, 2), flush=True)
            for (pipeline, dtype), values in rates.items():
                base = rates[(args.pipelines[0], dtype)]
                record = records.get(names[(pipeline, dtype)])
                rows.append({
                    "model": args.model, "batch": batch, "dtype": dtype, "pipeline": pipeline,
                    "served": f"{record.pipeline} {record.dtype}" if record else "?",
                    "items_per_s": round(statistics.median(values), 2),
                    "ratio": round(statistics.median(a / b for a, b in zip(values, base)), 3),
                    "samples": [round(v, 2) for v in values]})
            for name in names.values():
                management(server, "DELETE", f"/models/{name}")
    finally:
        server.stop()
    return rows


def markdown(rows: list[dict], args: argparse.Namespace, started: str) -> str:
    first = args.pipelines[0]
    lines = [f"# Served throughput, interleaved ({started})", "",
             f"{args.model}; plain TorchServe, one worker per archive using both cores; "
             f"{args.rounds} rounds of ab -k -n {args.requests} -c 2*batch per archive, "
             f"alternating; medians.", "",
             f"| batch | dtype | pipeline (served) | items/s | vs {first} (median of rounds) |",
             "|---:|---|---|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['batch']} | {row['dtype']} | {row['pipeline']} "
                     f"({row['served']}) | {row['items_per_s']} | {row['ratio']}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", choices=sorted(MODEL_CASES))
    parser.add_argument("--pipelines", nargs="+", default=["default", "aot"])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=80)
    parser.add_argument("--out", type=Path,
                        default=RESULTS / f"{datetime.date.today().isoformat()}-aot")
    args = parser.parse_args(argv)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    work = Path(tempfile.mkdtemp(prefix="interleaved-"))
    try:
        rows = measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "interleaved.json").write_text(json.dumps(
        {"started": started, "argv": vars(args) | {"out": str(args.out)}, "rows": rows},
        indent=1) + "\n")
    (args.out / "interleaved.md").write_text(markdown(rows, args, started))
    print(args.out / "interleaved.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
