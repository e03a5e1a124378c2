"""IPEX vs native: ResNet-50 raw img/s of the handler's default pipeline, one table.

    bash scripts/ipex_lane.sh bench [--seconds 20] [--batches 1 8] [--rounds 4]

Runs in the IPEX lane (torch 2.8 + IPEX 2.8). Each path lives in its own worker process,
because importing IPEX changes every TorchScript graph in the process (its fusion passes
rewrite native graphs too, and break them after optimize_for_inference): the native worker
never imports IPEX, so it is what a torch 2.8 user without IPEX gets. Each worker builds
its candidates with the handler's own optimizer (accuracy gate included, so bf16 is only
reported where the gate keeps it). The parent then asks the workers for measurements in
interleaved rounds, one at a time, and keeps each candidate's best round: on a shared
machine other work only slows a round down, and interleaving spreads it over everyone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import torch

from benchmarks.reference import raw_items_per_s
from torchserve_cpu.handlers.loading import load_state_dict, model_class_from_file
from torchserve_cpu.handlers.model_config import parse_settings
from torchserve_cpu.handlers.optimize.ipex_support import IpexStatus, probe_ipex
from torchserve_cpu.handlers.optimize.optimizer import Optimized, optimize
from torchserve_cpu.handlers.tasks import make_task
from torchserve_cpu.model_store.build import MODELS, STORE_DIR, weights_path

RESULTS = Path(__file__).resolve().parent / "results"
IMAGE = STORE_DIR / "samples" / "shapes.jpg"
NATIVE = IpexStatus(None, "not imported (native worker)")
PATHS = ("native", "ipex")
DTYPES = ("fp32", "bf16")


@dataclass(frozen=True)
class Row:
    path: str  # "native" or "ipex"
    requested: str  # fp32 / bf16 asked of the handler
    dtype: str  # what the accuracy gate kept
    pipeline: str
    batch: int
    img_per_s: float
    vs_native: float | None = None


def resnet50() -> torch.nn.Module:
    model = model_class_from_file(MODELS["resnet50"].source_dir / "model.py")()
    model.load_state_dict(load_state_dict(weights_path(MODELS["resnet50"])))
    return model.eval()


def build(ipex: IpexStatus, dtype: str) -> Optimized:
    """The model our handler would serve with this IPEX status and `handler.dtype`."""
    settings = parse_settings({"task": "image_classification", "dtype": dtype})
    with tempfile.TemporaryDirectory() as model_dir:
        task = make_task(settings, Path(model_dir))
        return optimize(resnet50(), task.example_inputs(1), settings, ipex, True)


def image_batch(batch: int) -> tuple[torch.Tensor, ...]:
    settings = parse_settings({"task": "image_classification"})
    with tempfile.TemporaryDirectory() as model_dir:
        task = make_task(settings, Path(model_dir))
        return task.collate([task.decode(IMAGE.read_bytes(), "image/jpeg")] * batch)


def worker(path: str, conn: Connection) -> None:
    """Build fp32 and bf16 candidates for one path, then measure on request until None."""
    status = probe_ipex() if path == "ipex" else NATIVE
    if path == "ipex" and not status.usable:
        conn.send(RuntimeError(f"IPEX is not usable here ({status.reason}): run this in the "
                               "lane, bash scripts/ipex_lane.sh bench"))
        return
    models = {dtype: build(status, dtype) for dtype in DTYPES}
    conn.send({dtype: (model.dtype, model.plan.describe()) for dtype, model in models.items()})
    inputs: dict[int, tuple[torch.Tensor, ...]] = {}
    while (request := conn.recv()) is not None:
        dtype, batch, seconds = request
        if batch not in inputs:
            inputs[batch] = image_batch(batch)
        conn.send(raw_items_per_s(models[dtype], inputs[batch], batch, seconds))


def measure(batches: Sequence[int], seconds: float, rounds: int) -> list[Row]:
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no IPEX inherited
    conns: dict[str, Connection] = {}
    processes = []
    try:
        for path in PATHS:
            parent, child = context.Pipe()
            process = context.Process(target=worker, args=(path, child), daemon=True)
            process.start()
            processes.append(process)
            conns[path] = parent
        built = {path: conn.recv() for path, conn in conns.items()}
        for answer in built.values():
            if isinstance(answer, Exception):
                raise answer
        best: dict[tuple[str, str, int], float] = {}
        for batch in batches:
            for _ in range(rounds):
                for path, conn in conns.items():
                    for dtype in DTYPES:
                        conn.send((dtype, batch, seconds / rounds))
                        key = (path, dtype, batch)
                        best[key] = max(best.get(key, 0.0), conn.recv())
    finally:
        for conn in conns.values():
            with contextlib.suppress(OSError):
                conn.send(None)
        for process in processes:
            process.join(timeout=30)
    return [Row(path, dtype, built[path][dtype][0], built[path][dtype][1], batch,
                best[(path, dtype, batch)],
                best[(path, dtype, batch)] / best[("native", dtype, batch)])
            for batch in batches for dtype in DTYPES for path in PATHS]


def markdown(rows: Sequence[Row], machine: dict[str, object]) -> str:
    lines = [
        f"# ResNet-50 raw img/s, IPEX vs native ({machine['date']})",
        "",
        f"torch {machine['torch']}, ipex {machine['ipex']}, {machine['threads']} threads, "
        f"{machine['cpu']}; 1-min load average {machine['load_before']:.1f} before, "
        f"{machine['load_after']:.1f} after (candidates interleaved, best round kept)",
        "",
        "| path | asked | kept | batch | img/s | vs native | pipeline |",
        "| --- | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        ratio = f"{row.vs_native:.2f}x" if row.vs_native is not None else ""
        lines.append(f"| {row.path} | {row.requested} | {row.dtype} | {row.batch} | "
                     f"{row.img_per_s:.1f} | {ratio} | `{row.pipeline}` |")
    return "\n".join(lines) + "\n"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ipex_compare",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="timed seconds per candidate and batch, split over the rounds")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]  # the machine is shared: say how busy it was
    try:
        rows = measure(args.batches, args.seconds, args.rounds)
    except (RuntimeError, EOFError) as error:  # EOFError: a worker died (its traceback above)
        print(f"error: {error or 'a measuring worker exited'}", file=sys.stderr)
        return 2
    from importlib.metadata import version

    machine = {"date": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(),
               "torch": torch.__version__, "ipex": version("intel-extension-for-pytorch"),
               "threads": torch.get_num_threads(), "cpu": cpu_model(),
               "load_before": load_before, "load_after": os.getloadavg()[0]}
    out = args.out / f"{time.strftime('%Y-%m-%d')}-{platform.node()}-ipex"
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, machine)
    (out / "ipex_compare.md").write_text(table)
    (out / "ipex_compare.json").write_text(
        json.dumps({"machine": machine, "rows": [asdict(row) for row in rows]}, indent=2))
    print(table)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
