"""A TorchServe worker whose environment has IPEX built for another torch keeps serving.

The real intel-extension-for-pytorch 2.8.0 (the stand-in when pip cannot fetch it) is put
on the worker's PYTHONPATH next to the main venv's torch 2.13: its import raises
AttributeError, and the worker must load on the native path, log why, and answer.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from benchmarks import loopback_torchserve as server
from benchmarks.loopback_torchserve import post
from tests.support.ipex_wheel import FAKE_DIR, real_ipex_dir
from torchserve_cpu.model_store.build import STORE_DIR, build_archive

REPO = Path(__file__).resolve().parents[2]
IMAGE = STORE_DIR / "samples" / "shapes.jpg"


def test_worker_serves_on_native_path_with_mismatched_ipex(tmp_path: Path) -> None:
    site, _ = real_ipex_dir()
    ipex_dir = site or FAKE_DIR
    store = tmp_path / "store"
    build_archive("resnet50", store, workers=1)
    pythonpath = os.pathsep.join(p for p in (str(ipex_dir), os.environ.get("PYTHONPATH")) if p)
    ts = server.start(REPO / "config" / "config.properties", store, ["resnet50.mar"],
                      env={"PYTHONPATH": pythonpath}, run_dir=tmp_path / "ts")
    try:
        ts.wait_ready(["resnet50"], timeout=300)
        reply = post(f"{ts.inference_url}/predictions/resnet50", IMAGE.read_bytes(),
                     "image/jpeg")
        assert reply.status == 200, reply.body
        log = (ts.log_dir / "model_log.log").read_text(errors="replace")
    finally:
        ts.stop()
    ready = [line for line in log.splitlines() if "ready model=resnet50" in line]
    assert ready, log[-3000:]
    assert re.search(r"ipex=import failed \(AttributeError: .*intel-extension-for-pytorch "
                     r"2\.8\.0 installed, torch 2\.13", ready[0]), ready[0]
    assert "pipeline=default[ipex_or_native>" in ready[0]
    assert "ipex skipped: import failed (AttributeError" in ready[0]
    assert "rejected=[]" in ready[0]
    if site is None:
        pytest.skip("checked with the stand-in only: the real IPEX wheel was unavailable")
