"""The served-model record: written as one log message, read back from a TorchServe log."""

from __future__ import annotations

from torchserve_cpu.handlers.served_record import ServedRecord, read_records, record_line

RECORD = ServedRecord(
    model="resnet50", pid=4242, pipeline="default[ipex_or_native>trace] bf16", preset="default",
    steps=("ipex_or_native", "trace"), dtype="bf16", ipex="import failed (x = y [z])",
    load_s=2.125, intra_op_threads=1, affinity=(0,),
    placement={"cpus": [0], "node": 0, "threads": 1, "allocator": "tcmalloc"},
    notes=("native: native (conv+bn folded)", "ipex skipped: not installed"),
    rejected=("jit[trace] failed: RuntimeError: a ... b",),
    timings_ms={"aot[aot] int8": 31.25, "aot[aot]": 70.5},
)


def as_torchserve_logs(message: str, model: str = "resnet50") -> str:
    """How the frontend writes a worker's log message into model_log.log."""
    return f"2026-11-21T06:28:56,204 [INFO ] W-9000-{model}_1.0-stdout MODEL_LOG - {message}"


def test_record_round_trips_through_the_log() -> None:
    log = "\n".join([
        as_torchserve_logs("Torch worker started."),
        as_torchserve_logs("ready model=resnet50 pipeline=default[trace] ipex=x dtype=bf16"),
        as_torchserve_logs(record_line(RECORD)),
    ])
    assert read_records(log) == [RECORD]
    assert "\n" not in record_line(RECORD)


def test_unreadable_records_are_ignored() -> None:
    cut = record_line(RECORD)[:-10]  # a worker killed while writing
    older = 'served-model {"model": "resnet50"}'  # another version of the format
    assert read_records("\n".join([cut, older, "served-model not json", ""])) == []
