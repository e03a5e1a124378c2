"""An int8 package built at archive time, served by real TorchServe: EfficientNet-Lite0
archived with `optimize: aot, dtype: int8` (`torchserve-cpu build-archives --models
efficientnet_lite0 --aot --dtype int8`), its worker unable to compile (CXX points nowhere),
loads aot-int8.pt2 instead of quantizing (22-149 s per start, benchmarks/results/precision/)
and answers scikit-image's photos as fp32 does (an fp32 aot archive in the same server).

Packages are cached in $TSCPU_CACHE_DIR/aot (or ~/.cache/torchserve-cpu/aot): a first run
quantizes and compiles (about a minute here), later ones copy.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from benchmarks import loopback_torchserve as server
from benchmarks.loopback_torchserve import http_json, post
from torchserve_cpu.handlers.served_record import read_records
from torchserve_cpu.model_store.build import build_archive

skimage = pytest.importorskip("skimage", reason="scikit-image ships the photos ([test] extra)")

REPO = Path(__file__).resolve().parents[2]
PHOTOS = Path(skimage.__file__).parent / "data"
MODEL = "efficientnet_lite0"
INT8, FP32 = "effnet_aot_int8", "effnet_aot_fp32"
LOAD_LIMIT_S = 0.5  # issue 17: "loaded in well under a second"


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory):
    store = tmp_path_factory.mktemp("store")
    aot = {"optimize": "aot", "response": "detailed"}
    build_archive(MODEL, store, workers=1, archive_name=INT8,
                  handler_overrides={**aot, "dtype": "int8"})
    build_archive(MODEL, store, workers=1, archive_name=FP32, handler_overrides=aot)
    env = {"CXX": "/nonexistent/c++",
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path_factory.mktemp("inductor"))}
    # the int8 worker starts alone, after the frontend's start: its load time is its own,
    # not a race for the 2 cores with the fp32 worker (started together: 1.2 s against
    # 0.45 s in-process) or with the JVM's warm-up (started with the server: 2.3 s)
    config = tmp_path_factory.mktemp("config") / "config.properties"
    config.write_text((REPO / "config" / "config.properties").read_text().replace(
        "enable_model_api=false", "enable_model_api=true"))  # to register fp32 after
    ts = server.start(config, store, [f"{FP32}.mar"], env=env,
                      run_dir=tmp_path_factory.mktemp("ts"))
    try:
        ts.wait_ready([FP32], timeout=600)
        http_json(f"{ts.management_url}/models?url={INT8}.mar&initial_workers=1"
                  "&synchronous=true", "POST", timeout=600)
        ts.wait_ready([INT8, FP32], timeout=600)
        yield ts
    finally:
        ts.stop()


def record_of(ts: server.TorchServe, model: str):
    log = (ts.log_dir / "model_log.log").read_text(errors="replace")
    return next(r for r in read_records(log) if r.model == model)


def test_the_worker_loads_the_int8_package_fast(serving: server.TorchServe) -> None:
    record = record_of(serving, INT8)
    assert record.pipeline == "aot[aot] int8" and record.dtype == "int8", record.rejected
    assert record.rejected == ()
    loaded = re.search(r"aot-int8.pt2 loaded in ([0-9.]+)s", record.notes[0])
    assert loaded and float(loaded[1]) <= LOAD_LIMIT_S, record.notes
    # The whole start (load_s) on 2 intra-op threads: 0.1 s on a quiet host, 1.0-3.3 s for
    # fp32 and int8 packages alike while other work keeps the 2 cores busy (a oneDNN call
    # on 2 threads waits for the descheduled one): measurable only on a quiet host.
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        pytest.skip(f"host busy (load {os.getloadavg()[0]:.1f}): load_s {record.load_s}")
    assert record.load_s <= LOAD_LIMIT_S, record


def top(ts: server.TorchServe, model: str, photo: str) -> list[int]:
    body = (PHOTOS / photo).read_bytes()
    reply = post(f"{ts.inference_url}/predictions/{model}", body, "image/png")
    assert reply.status == 200, reply.body
    return [entry["index"] for entry in reply.json()["topk"]]


def test_int8_answers_the_coffee_photo_with_fp32s_top1(serving: server.TorchServe) -> None:
    assert top(serving, INT8, "coffee.png")[0] == top(serving, FP32, "coffee.png")[0] == 967


def test_int8_keeps_fp32s_near_tie_on_the_cat_photo(serving: server.TorchServe) -> None:
    """fp32 calls chelsea.png Egyptian cat (285) 0.380 against tiger cat (282) 0.376: a tie
    any rounding reorders. Every int8 model measured here (q/dq 8-bit; 8- and 7-bit with
    _blocks.0 in fp32; this package) says 282 first and 285 second, so the top-1 is not
    the check; the two leading classes are (the gate asks top-1 only where fp32 leads by
    >= 0.1)."""
    fp32, int8 = top(serving, FP32, "chelsea.png"), top(serving, INT8, "chelsea.png")
    assert fp32[0] == 285 and set(int8[:2]) == set(fp32[:2]) == {282, 285}, (fp32, int8)
