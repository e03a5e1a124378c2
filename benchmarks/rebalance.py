"""How long a re-balance takes to reach a busy worker, measured on real TorchServe.

ResNet-50 (optimized handler) is served by one worker holding every core while ab -k
keeps it busy; a second model is then registered through the management API. From the
moment the newcomer joins the registry (its generation changes) we time until the busy
worker's CPUs change in /proc (the watcher thread) and until it records the new thread
count (the inference thread, before its next batch). Writes rebalance.json.

    python -m benchmarks.rebalance [--out benchmarks/results/rebalance]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.loopback_torchserve import start, write_properties
from torchserve_cpu.launcher.host.procfs import allowed_cpus
from torchserve_cpu.launcher.torchserve.registry import FILE_NAME, REGISTRY_ENV, read_entries
from torchserve_cpu.model_store.build import STORE_DIR, build_archive

RESULTS = Path(__file__).resolve().parent / "results" / "rebalance"


def measure(out: Path, concurrency: int = 4) -> dict:
    work = Path(tempfile.mkdtemp(prefix="rebalance-"))
    store, registry = work / "store", work / "registry"
    registry.mkdir(parents=True)
    build_archive("resnet50", store, workers=1, archive_name="first")
    build_archive("resnet50", store, workers=1, archive_name="second")
    config = work / "config.properties"
    write_properties(config, {"cpu_launcher_enable": "true", "enable_model_api": "true",
                              "disable_token_authorization": "true"})
    server = start(config, store, ["first=first.mar"], env={REGISTRY_ENV: str(registry)},
                   run_dir=work / "ts")
    try:
        server.wait_ready(["first"], timeout=600)
        (busy,) = server.worker_pids("first")
        before = allowed_cpus(busy)
        load = subprocess.Popen(
            ["ab", "-k", "-r", "-c", str(concurrency), "-t", "120", "-n", "100000", "-p",
             str(STORE_DIR / "samples" / "shapes.jpg"), "-T", "image/jpeg",
             f"{server.inference_url}/predictions/first"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(5)  # the worker is busy
        registry_file = registry / FILE_NAME
        generation = json.loads(registry_file.read_text())["generation"]
        request = urllib.request.Request(
            f"{server.management_url}/models?url=second.mar&initial_workers=1&synchronous=false",
            method="POST")
        urllib.request.urlopen(request, timeout=600).close()  # 202: the worker starts now
        joined = pinned = applied = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and applied is None:
            now = time.monotonic()
            if joined is None and json.loads(registry_file.read_text())["generation"] > generation:
                joined = now
            if joined is not None and pinned is None and allowed_cpus(busy) != before:
                pinned = now
            entry = next((e for e in read_entries(registry) if e.pid == busy), None)
            if pinned is not None and entry and entry.applied_threads == entry.threads:
                applied = now
            time.sleep(0.001)
        after = allowed_cpus(busy)
        load.terminate()
        load.wait(30)
    finally:
        server.stop()
    result = {
        "what": "ResNet-50 worker busy under ab -k; second model registered via the API",
        "concurrency": concurrency,
        "cpus_before": list(before),
        "cpus_after": list(after),
        "affinity_moved_ms": None if pinned is None else round(1000 * (pinned - joined), 1),
        "threads_applied_ms": None if applied is None else round(1000 * (applied - joined), 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "rebalance.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    print(json.dumps(measure(parser.parse_args().out), indent=2))


if __name__ == "__main__":
    main()
