"""What a worker serves, as data: one JSON object on a log line of its own after a mark.

The `ready model=...` line is for people; this record is for programs (the benchmarks
read which pipeline and dtype a worker really serves after its accuracy gate). Writer and
reader live here, so the format has one home and no one parses the human line. JSON, not
key=value text: notes and IPEX reasons hold spaces, brackets and `=`. This module imports
nothing heavy, so a reader needs neither torch nor TorchServe.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

RECORD_MARK = "served-model "  # followed by the JSON object, to the end of the line


@dataclass(frozen=True)
class ServedRecord:
    """One worker's served model when it reported ready."""

    model: str
    pid: int
    pipeline: str  # the chosen plan: preset[step>step...], " bf16" appended when bf16
    preset: str  # the chosen plan's name: a preset, "custom" or "eager"
    steps: tuple[str, ...]  # the chosen plan's steps, in order
    dtype: str  # fp32, bf16 or int8: what runs, after the CPU's fit and the accuracy gate
    ipex: str  # why IPEX is or is not used
    load_s: float  # initialize() from start to ready, warm-up included
    intra_op_threads: int
    affinity: tuple[int, ...]  # CPUs the worker may run on at ready time
    placement: dict[str, object] | None  # the launcher's seat at ready time; None: not pinned
    notes: tuple[str, ...]  # what each step did or skipped
    rejected: tuple[str, ...]  # candidates that failed or disagreed with eager, and why
    requested_dtype: str = "fp32"  # handler.dtype as configured (auto included)
    precision: str = ""  # why this dtype: what the CPU runs of the request, then the gate
    cpu: dict[str, object] | None = None  # the CPU facts read: model, bf16 / int8 flags
    #: auto: ms per call of each candidate timed on the example batch (the fastest serves)
    timings_ms: dict[str, float] = field(default_factory=dict)


_TUPLES = ("steps", "affinity", "notes", "rejected")


def record_line(record: ServedRecord) -> str:
    """The log message carrying `record`: the mark, then compact JSON (one line)."""
    return RECORD_MARK + json.dumps(asdict(record), separators=(",", ":"), sort_keys=True)


def read_records(log_text: str) -> list[ServedRecord]:
    """Every record in a log, in order; lines a record cannot be read from are ignored
    (other handlers, other versions of the format, a line cut off by a crash)."""
    names = [field.name for field in fields(ServedRecord)]
    records = []
    decoder = json.JSONDecoder()
    for line in log_text.splitlines():
        _, mark, rest = line.partition(RECORD_MARK)
        if not mark:
            continue
        try:
            data, _ = decoder.raw_decode(rest)
            values = {name: data[name] for name in names if name in data}
            values.update({name: tuple(values[name]) for name in _TUPLES})
        except (ValueError, KeyError, TypeError):
            continue
        records.append(ServedRecord(**values))
    return records
