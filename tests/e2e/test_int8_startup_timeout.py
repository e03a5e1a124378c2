"""A first int8 start that outlasts TorchServe's startupTimeout: the worker is killed mid-build
(as TorchServe does to any worker whose load takes longer), the build goes on in its own
process, and a restarted worker waits for it and serves the package: built once, never
started over at every restart (EfficientNet-Lite0 was killed three times in a row, 6 min)."""

from __future__ import annotations

from pathlib import Path

from benchmarks import loopback_torchserve as server
from benchmarks.loopback_torchserve import post
from tests.e2e.test_int8 import build, picture
from torchserve_cpu.handlers.served_record import read_records

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 4  # the small net's int8 build takes longer than this here


def test_a_worker_killed_mid_build_comes_back_to_the_finished_package(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    build(tmp_path / "work", tmp_path / "store", (f"startupTimeout: {STARTUP_TIMEOUT_S}",))
    cache = tmp_path / "cache"
    with server.start(REPO / "config" / "config.properties", tmp_path / "store", ["small.mar"],
                      env={"TSCPU_CACHE_DIR": str(cache)}, run_dir=tmp_path / "ts") as ts:
        ts.wait_ready(["small"], timeout=300)
        reply = post(f"{ts.inference_url}/predictions/small", picture(7), "image/png")
        assert reply.status == 200, reply.body
        ts_log = (ts.log_dir / "ts_log.log").read_text(errors="replace")
        log = (ts.log_dir / "model_log.log").read_text(errors="replace")
    assert "Backend worker did not respond in given time" in ts_log  # killed mid-build
    assert log.count("building this host's int8 package") == 1  # one build, not one per start
    [record] = [r for r in read_records(log) if r.model == "small"]
    assert record.dtype == "int8" and record.pipeline == "aot[aot] int8", record
    assert "int8 host cache hit" in log
    assert len(list((cache / "int8").glob("*.log"))) == 1
