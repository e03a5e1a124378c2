"""`dtype: auto` served by real TorchServe: the small conv net of test_int8 (its calibration
photos, no package). The worker tries the precisions this CPU runs fastest unit first,
serves the faster of the first one that passes and fp32, and says so: the served-model
record names the request, the dtype served and the timings behind the choice; the
precisions after the first that passed are not built."""

from __future__ import annotations

from pathlib import Path

from benchmarks import loopback_torchserve as server
from benchmarks.loopback_torchserve import post
from tests.e2e.test_int8 import HANDLER, build, picture
from torchserve_cpu.handlers.optimize.precision import decide
from torchserve_cpu.handlers.served_model import this_cpu
from torchserve_cpu.handlers.served_record import read_records

REPO = Path(__file__).resolve().parents[2]


def test_auto_serves_the_faster_of_the_first_passing_precision_and_fp32(
        tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    build(tmp_path / "work", tmp_path / "store", handler={**HANDLER, "dtype": "auto"})
    with server.start(REPO / "config" / "config.properties", tmp_path / "store", ["small.mar"],
                      env={"TSCPU_CACHE_DIR": str(tmp_path / "cache")},
                      run_dir=tmp_path / "ts") as ts:
        ts.wait_ready(["small"], timeout=300)
        reply = post(f"{ts.inference_url}/predictions/small", picture(3), "image/png")
        assert reply.status == 200, reply.body
        log = (ts.log_dir / "model_log.log").read_text(errors="replace")
    [record] = [r for r in read_records(log) if r.model == "small"]
    assert record.requested_dtype == "auto"
    first = decide("auto", this_cpu()).candidates[0].dtype  # int8 wherever int8 runs
    timed = record.timings_ms
    assert len(timed) >= 2 and any(name.endswith(first) for name in timed), timed
    assert record.pipeline == min(timed, key=timed.get)  # the fastest of those timed serves
    assert "timed_ms=" in log
    if first == "int8" and record.dtype == "int8":
        # int8 passed: bf16 (where this CPU has it) and a second int8 are not built
        assert any("not built: " in line for line in record.rejected), record.rejected
