"""A bf16 archive where oneDNN cannot run bf16, on real TorchServe: the server is started
with ONEDNN_MAX_CPU_ISA=AVX2 (as an operator pins a mixed node pool to its oldest CPUs), so
the worker sees no native bf16 whatever this CPU has, serves fp32 without building bf16,
and says why in its served-model record and its log (the metric labels: test_metrics)."""

from __future__ import annotations

from pathlib import Path

from benchmarks import loopback_torchserve as server
from benchmarks.loopback_torchserve import post
from tests.e2e.test_int8 import HANDLER, build, picture
from torchserve_cpu.handlers.served_record import read_records
from torchserve_cpu.launcher.host import read_cpu_facts

REPO = Path(__file__).resolve().parents[2]


def test_bf16_where_onednn_has_no_bf16_serves_fp32_and_says_why(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    build(tmp_path / "work", tmp_path / "store", handler={**HANDLER, "dtype": "bf16"})
    env = {"ONEDNN_MAX_CPU_ISA": "AVX2", "TSCPU_CACHE_DIR": str(tmp_path / "cache")}
    with server.start(REPO / "config" / "config.properties", tmp_path / "store", ["small.mar"],
                      env=env, run_dir=tmp_path / "ts") as ts:
        ts.wait_ready(["small"], timeout=300)
        reply = post(f"{ts.inference_url}/predictions/small", picture(5), "image/png")
        assert reply.status == 200, reply.body
        log = (ts.log_dir / "model_log.log").read_text(errors="replace")
    [record] = [r for r in read_records(log) if r.model == "small"]
    assert (record.requested_dtype, record.dtype) == ("bf16", "fp32")
    assert record.cpu is not None and record.cpu["bf16"] == []
    assert not any(" bf16" in line.split(":")[0] for line in record.rejected)  # never built
    assert "precision: bf16 requested, but" in log
    if "avx512_bf16" in read_cpu_facts(environ={}).flags:  # the cap hid a unit it has
        assert "ONEDNN_MAX_CPU_ISA=AVX2 keeps oneDNN from" in record.precision
        assert record.cpu["onednn_max_cpu_isa"] == "AVX2"
