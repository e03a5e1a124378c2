"""The main job: ask a real classifier about real photos, then serve ResNet-50 through the
optimizing handler on pinned workers and drive it.

Builds the model store; starts TorchServe on 127.0.0.1 through the launcher (each worker
on its own cores, tcmalloc preloaded) with EfficientNet-Lite0 (real ImageNet weights),
asks it what is in two real photos (scikit-image's chelsea.png and coffee.png, read from
the installed package) and stops; starts it again with ResNet-50 (random weights: the
speed benchmark, alone on the cores), sends real requests and prints the answers, runs a
short apache-bench load (ab -k), shows `launcher doctor`, stops.
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a file: the harness (benchmarks/) is not installed
    sys.path.insert(0, str(REPO))

from benchmarks.ab import AbLoad, run_ab  # noqa: E402
from benchmarks.loopback_torchserve import TorchServe, post, start_with_launcher  # noqa: E402
from torchserve_cpu.model_store.build import DEFAULT_OUT, STORE_DIR, build_archive  # noqa: E402

IMAGE = STORE_DIR / "samples" / "shapes.jpg"
CLASSIFIER = "efficientnet_lite0"


def photo(name: str) -> Path:
    """A photo that ships inside the scikit-image wheel (its `data` folder; no download)."""
    try:
        import skimage
    except ImportError:
        raise SystemExit("the demo's photos come with scikit-image: "
                         "pip install 'torchserve-cpu[demo]'") from None
    return Path(skimage.__file__).parent / "data" / name


@contextmanager
def serving(config: Path, model: str) -> Iterator[TorchServe]:
    """TorchServe through the launcher with one model, READY, stopped on the way out."""
    run_dir = Path(tempfile.mkdtemp(prefix="torchserve-demo-"))
    print(f"== starting TorchServe ({config.name}) with {model}; logs in {run_dir}/logs")
    ts, _ = start_with_launcher(config, DEFAULT_OUT, [f"{model}.mar"], run_dir=run_dir)
    try:
        ts.wait_ready([model], timeout=600)
        print(f"  READY at {ts.inference_url}")
        for line in (ts.log_dir / "model_log.log").read_text().splitlines():
            if "worker placement:" in line or " ready model=" in line:
                print("  " + line.split("- ", 1)[-1][:230])
        yield ts
    finally:
        print("== stopping TorchServe")
        ts.stop()
        print("  stopped" if not ts.alive() else "  still running!")


def top_classes(body: bytes) -> str:
    """`Egyptian cat 0.38, tiger cat 0.38, ...` from a classifier's answer."""
    return ", ".join(f"{label} {probability:.2f}"
                     for label, probability in json.loads(body).items())


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

    photos = [photo("chelsea.png"), photo("coffee.png")]
    print("== building model store")
    for model in (CLASSIFIER, "resnet50"):
        print(f"  {build_archive(model, DEFAULT_OUT)}")
    with serving(args.config, CLASSIFIER) as ts:
        print(f"== real photos: {CLASSIFIER} (ImageNet weights), top-5")
        for path in photos:
            reply = post(f"{ts.inference_url}/predictions/{CLASSIFIER}", path.read_bytes(),
                         "image/png")
            answer = top_classes(reply.body) if reply.status == 200 else reply.body.decode()
            print(f"  {path.name:<12} HTTP {reply.status}  {answer}")
    with serving(args.config, "resnet50") as ts:
        url = f"{ts.inference_url}/predictions/resnet50"
        print("== requests: resnet50 (random weights: the speed benchmark)")
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


if __name__ == "__main__":
    raise SystemExit(main())
