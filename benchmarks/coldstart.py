"""Cold start per pipeline on real TorchServe: registration to READY, worker start to
READY, the handler's own load time, and how long a `kill -9`ed worker takes to be replaced.

One TorchServe (plain, no launcher: one worker holds every core) registers each archive in
turn through the management API (synchronous), rounds interleaved so the machine's load
falls on every pipeline alike; after READY the worker is killed with SIGKILL and timed
until TorchServe's replacement is READY, then the model is unregistered. The inductor
cache is emptied before each registration: `compile` pays its compile each time, as on a
fresh machine (its replacement after the kill finds the cache warm, as on the same one).

    python -m benchmarks.coldstart [--models resnet50] [--pipelines eager default compile aot]
        [--repeat 3] [--out benchmarks/results/<date>-aot]

Writes coldstart.json and coldstart.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import statistics
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import psutil

from benchmarks.loopback_torchserve import TorchServe, start, write_properties
from torchserve_cpu.handlers.served_record import read_records
from torchserve_cpu.model_store.build import build_archive

RESULTS = Path(__file__).resolve().parent / "results"
PIPELINES = ("eager", "default", "compile", "aot")


def management(server: TorchServe, method: str, path: str, timeout: float = 900) -> None:
    request = urllib.request.Request(f"{server.management_url}{path}", method=method)
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"{method} {path}: {error.code} {error.read()[:300]!r}\n"
                           f"{server.log_tail()}") from None


def wait_management(server: TorchServe, timeout: float = 120) -> None:
    """The management API answers a few seconds after `torchserve --start`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            server.models()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def ready_pids(server: TorchServe, name: str) -> list[int]:
    try:
        return server.worker_pids(name)
    except OSError:
        return []


def one_start(server: TorchServe, archive: Path, name: str, inductor_cache: Path,
              seen: int) -> dict:
    """Register, time READY; kill -9 the worker, time its replacement; unregister."""
    shutil.rmtree(inductor_cache, ignore_errors=True)
    inductor_cache.mkdir()
    query = urllib.parse.urlencode({"url": archive.name, "model_name": name,
                                    "initial_workers": 1,
                                    "response_timeout": 900, "startup_timeout": 900,
                                    "synchronous": "true"})
    started = time.time()
    management(server, "POST", f"/models?{query}")
    ready = time.time()
    (pid,) = ready_pids(server, name)
    worker_started = psutil.Process(pid).create_time()
    records = [r for r in read_records((server.log_dir / "model_log.log").read_text())
               if r.model == name]
    record = records[seen]  # this registration's worker
    os.kill(pid, signal.SIGKILL)  # a worker of the server this script started
    killed = time.monotonic()
    while True:
        pids = ready_pids(server, name)
        if pids and pids != [pid]:
            break
        if time.monotonic() - killed > 900:
            raise TimeoutError(f"{name}: no replacement for worker {pid} after 900 s")
        time.sleep(0.05)
    replaced = time.monotonic() - killed
    management(server, "DELETE", f"/models/{name}")
    return {"register_to_ready_s": round(ready - started, 2),
            "worker_start_to_ready_s": round(ready - worker_started, 2),
            "load_s": record.load_s, "replace_after_kill9_s": round(replaced, 2),
            "pipeline": record.pipeline, "dtype": record.dtype, "rejected": record.rejected}


def measure(models: list[str], pipelines: list[str], repeat: int, work: Path) -> list[dict]:
    store = work / "store"
    archives = {}
    for model in models:
        for pipeline in pipelines:
            name = f"{model}-{pipeline}"
            archives[name] = build_archive(model, store, workers=1, archive_name=name,
                                           handler_overrides={"optimize": pipeline})
    config = work / "config.properties"
    write_properties(config, {"enable_model_api": "true", "disable_token_authorization": "true",
                              "default_workers_per_model": "1"})
    cache = work / "inductor-cache"
    server = start(config, store, [], env={"TORCHINDUCTOR_CACHE_DIR": str(cache)},
                   run_dir=work / "ts")
    wait_management(server)
    samples: dict[str, list[dict]] = {name: [] for name in archives}
    try:
        for _ in range(repeat):
            for name, archive in archives.items():
                samples[name].append(one_start(server, archive, name, cache,
                                               len(samples[name]) * 2))
                print(name, samples[name][-1], flush=True)
    finally:
        server.stop()
    rows = []
    for name, runs in samples.items():
        model, pipeline = name.rsplit("-", 1)
        row: dict = {"model": model, "pipeline": pipeline, "served": runs[-1]["pipeline"],
                     "dtype": runs[-1]["dtype"], "runs": len(runs),
                     "archive_mb": round(archives[name].stat().st_size / 2**20, 1)}
        for key in ("register_to_ready_s", "worker_start_to_ready_s", "load_s",
                    "replace_after_kill9_s"):
            row[key] = round(statistics.median(run[key] for run in runs), 2)
            row[f"{key}_all"] = [run[key] for run in runs]
        rows.append(row)
    return rows


def markdown(rows: list[dict], started: str, load: str) -> str:
    lines = [f"# Cold start per pipeline ({started})", "",
             "Median of the runs; one worker holding both cores; plain TorchServe 0.12. "
             f"Load average of the 2-core machine before / after: {load}.", "",
             "| model | pipeline (served) | archive MB | register -> READY s | worker start -> "
             "READY s | load= s | replace after kill -9 s |", "|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['pipeline']} ({row['served']}) | "
                     f"{row['archive_mb']} | {row['register_to_ready_s']} | "
                     f"{row['worker_start_to_ready_s']} | {row['load_s']} | "
                     f"{row['replace_after_kill9_s']} |")
    lines += ["", "register -> READY: the management API's synchronous registration (the "
              "frontend unpacks the archive, starts the worker, the handler loads). worker "
              "start -> READY: from the worker process's creation. load=: the handler's "
              "initialize, from its ready line. replace: SIGKILL to the replacement's READY.",
              ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50"])
    parser.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=PIPELINES)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path,
                        default=RESULTS / f"{datetime.date.today().isoformat()}-aot")
    args = parser.parse_args(argv)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="coldstart-"))
    try:
        rows = measure(args.models, args.pipelines, args.repeat, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = f"{before:.1f} / {os.getloadavg()[0]:.1f}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "coldstart.json").write_text(json.dumps(
        {"started": started, "load_average": load, "rows": rows}, indent=1) + "\n")
    (args.out / "coldstart.md").write_text(markdown(rows, started, load))
    print(args.out / "coldstart.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
