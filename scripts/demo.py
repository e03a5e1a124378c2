"""The main job: serve ResNet-50 through the optimizing handler on pinned workers, drive it.

Builds the model store, starts TorchServe on 127.0.0.1 through the launcher (each worker
on its own cores, tcmalloc preloaded), waits for READY, sends real requests and prints
the answers, runs a short apache-bench load (ab -k), shows `launcher doctor`, stops.
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.ab import AbLoad, run_ab
from benchmarks.loopback_torchserve import post, start_with_launcher
from torchserve_cpu.model_store.build import DEFAULT_OUT, STORE_DIR, build_archive

REPO = Path(__file__).resolve().parents[1]
IMAGE = STORE_DIR / "samples" / "shapes.jpg"


def show(title: str, reply_status: int, body: bytes) -> None:
    text = body.decode(errors="replace")
    try:
        text = json.dumps(json.loads(text))
    except ValueError:
        pass
    print(f"  {title:<34} HTTP {reply_status}  {text[:150]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "config" / "launcher.properties")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()

    print("== building model store")
    archive = build_archive("resnet50", DEFAULT_OUT)
    print(f"  {archive}")
    run_dir = Path(tempfile.mkdtemp(prefix="torchserve-demo-"))
    print(f"== starting TorchServe ({args.config.name}); logs in {run_dir}/logs")
    ts, prepared = start_with_launcher(args.config, DEFAULT_OUT, ["resnet50.mar"], run_dir=run_dir)
    try:
        ts.wait_ready(["resnet50"], timeout=600)
        print(f"  READY at {ts.inference_url}")
        for line in (ts.log_dir / "model_log.log").read_text().splitlines():
            if "worker placement:" in line or " ready model=" in line:
                print("  " + line.split("- ", 1)[-1][:230])
        url = f"{ts.inference_url}/predictions/resnet50"
        print("== requests")
        reply = post(url, IMAGE.read_bytes(), "image/jpeg")
        show("shapes.jpg (image/jpeg)", reply.status, reply.body)
        png = (STORE_DIR / "samples" / "shapes.png").read_bytes()
        reply = post(url, png, "image/png")
        show("shapes.png (image/png)", reply.status, reply.body)
        body = json.dumps({"data": base64.b64encode(IMAGE.read_bytes()).decode()}).encode()
        reply = post(url, body, "application/json")
        show("base64 JSON", reply.status, reply.body)
        reply = post(url, b"this is not an image", "image/jpeg")
        show("bad input (text as image/jpeg)", reply.status, reply.body)
        print(f"== apache-bench: ab -k -c {args.concurrency} -n {args.requests}")
        result = run_ab(AbLoad(url, IMAGE, "image/jpeg", args.concurrency, args.requests))
        print(f"  {result.requests_per_s:.1f} req/s, mean {result.mean_latency_ms:.1f} ms, "
              f"p50 {result.percentile(50)} ms, p99 {result.percentile(99)} ms, "
              f"errors {result.errors} of {result.complete}")
        print("== python -m torchserve_cpu.launcher doctor")
        doctor = subprocess.run([sys.executable, "-m", "torchserve_cpu.launcher", "doctor"],
                                capture_output=True, text=True, check=False)
        print("  " + doctor.stdout.strip().replace("\n", "\n  "))
        return 0 if result.errors == 0 else 1
    finally:
        print("== stopping TorchServe")
        ts.stop()
        print("  stopped" if not ts.alive() else "  still running!")


if __name__ == "__main__":
    raise SystemExit(main())
