"""TorchServe's metrics as its 0.12 frontend sees them: a worker's `[METRICS]` line split as
the frontend splits it, and the Prometheus text a `/metrics` scrape returns."""

from __future__ import annotations

import re
import urllib.request
from dataclasses import dataclass

from torchserve_cpu.launcher.host.cpulist import parse_cpulist

# Metric.PATTERN in frontend/server/src/main/java/org/pytorch/serve/metrics/Metric.java
# (v0.12.0), applied by WorkerLifeCycle to what follows "[METRICS]" on a worker's stdout.
FRONTEND_PATTERN = re.compile(
    r"\s*([\w\s]+)\.([\w\s]+):([0-9\-,.e]+)\|#([^|]*)(\|#type:([^|,]+))?"
    r"\|#hostname:([^,]+),([^,]+)(,(.*))?"
)
MARK = "[METRICS]"


@dataclass(frozen=True)
class WorkerLine:
    """One metric update as the frontend reads it."""

    name: str
    value: float
    dimensions: tuple[tuple[str, str], ...]
    kind: str | None


def frontend_read(message: str) -> WorkerLine | None:
    """`message` as the frontend parses it; None when it would not take it as a metric.
    Dimensions split at "," then ":" and pairs that are not two parts dropped, as
    Metric.parse does (so a value holding "," or ":" shifts or loses labels)."""
    if not message.startswith(MARK):
        return None
    match = FRONTEND_PATTERN.fullmatch(message[len(MARK):])
    if match is None:
        return None
    pairs = [part.split(":") for part in match.group(4).split(",")]
    dimensions = tuple((pair[0], pair[1]) for pair in pairs if len(pair) == 2)
    return WorkerLine(match.group(1), float(match.group(3)), dimensions, match.group(6))


@dataclass(frozen=True)
class Sample:
    """One line of Prometheus text exposition: name{labels} value."""

    name: str
    labels: dict[str, str]
    value: float


_SAMPLE = re.compile(r"([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text: str) -> list[Sample]:
    """Samples of a Prometheus text exposition (comments skipped)."""
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.fullmatch(line.strip())
        if line.startswith("#") or match is None:
            continue
        labels = dict(_LABEL.findall(match.group(2) or ""))
        samples.append(Sample(match.group(1), labels, float(match.group(3))))
    return samples


def scrape(metrics_url: str) -> list[Sample]:
    """GET <metrics address>/metrics."""
    with urllib.request.urlopen(f"{metrics_url}/metrics", timeout=10) as reply:
        return parse_exposition(reply.read().decode())


def named(samples: list[Sample], name: str) -> list[Sample]:
    return [sample for sample in samples if sample.name == name]


def placements(samples: list[Sample], pid: int) -> list[Sample]:
    """A worker's current tscpu_worker_placement series: the ones its earlier seats left
    behind are at 0."""
    return [s for s in named(samples, "tscpu_worker_placement")
            if s.labels.get("Pid") == str(pid) and s.value > 0]


def placement_cpus(sample: Sample) -> set[int]:
    """The Cores label as CPU ids ("0-3 8": a cpulist with spaces for commas)."""
    return set(parse_cpulist(sample.labels["Cores"].replace(" ", ",")))
