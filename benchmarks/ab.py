"""Apache-bench: build the command, run it (warm-up then measured), parse its report.

Always `ab -k`: without keep-alive ab waits on TorchServe's keep-alive connections and hangs.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AbLoad:
    """One ab invocation: where to post what, how hard."""

    url: str
    postfile: Path
    content_type: str
    concurrency: int
    requests: int
    timeout_s: int = 120


@dataclass(frozen=True)
class AbResult:
    """What ab reports about one run. Latencies in ms; `None` where ab printed nothing."""

    complete: int
    failed: int
    #: ab counts a response whose length differs from the first one as a failure; classifier
    #: scores differ in length from request to request, so these are not errors.
    length_mismatches: int
    non_2xx: int
    duration_s: float
    requests_per_s: float
    mean_latency_ms: float
    percentiles_ms: dict[int, float]

    @property
    def errors(self) -> int:
        """Requests that really failed: refused, cut, timed out or answered with non-2xx."""
        return self.failed - self.length_mismatches + self.non_2xx

    def percentile(self, p: int) -> float | None:
        return self.percentiles_ms.get(p)


def ab_command(load: AbLoad, requests: int | None = None) -> list[str]:
    """The ab argv; `requests` overrides the count (used for the warm-up)."""
    n = load.requests if requests is None else requests
    concurrency = max(1, min(load.concurrency, n))
    return [
        # -r: keep going on socket errors (a reset connection would end the run early)
        "ab", "-k", "-q", "-r",
        "-c", str(concurrency),
        "-n", str(n),
        "-s", str(load.timeout_s),
        "-p", str(load.postfile),
        "-T", load.content_type,
        load.url,
    ]


def warmup_requests(requests: int, concurrency: int) -> int:
    """About a tenth of the requests, but at least one full round of the clients."""
    return max(requests // 10, concurrency, 1)


_NUMBER = r"([0-9]+(?:\.[0-9]+)?)"


def _field(text: str, label: str) -> float | None:
    match = re.search(rf"^{re.escape(label)}:\s+{_NUMBER}", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def parse_ab_output(text: str) -> AbResult:
    """Parse ab's text report; raises ValueError if it is not one (ab failed before measuring)."""
    complete = _field(text, "Complete requests")
    rps = _field(text, "Requests per second")
    if complete is None or rps is None:
        raise ValueError(f"not an ab report (no 'Complete requests'):\n{text[-2000:]}")
    # The breakdown line under "Failed requests": (Connect: 0, Receive: 0, Length: 5, ...)
    length = re.search(r"\(Connect: [0-9]+, Receive: [0-9]+, Length: ([0-9]+)", text)
    mean = re.search(rf"^Time per request:\s+{_NUMBER} \[ms\] \(mean\)$", text, re.MULTILINE)
    percentiles = {
        int(p): float(v)
        for p, v in re.findall(r"^\s*([0-9]+)%\s+([0-9]+)", text, re.MULTILINE)
    }
    return AbResult(
        complete=int(complete),
        failed=int(_field(text, "Failed requests") or 0),
        length_mismatches=int(length.group(1)) if length else 0,
        non_2xx=int(_field(text, "Non-2xx responses") or 0),
        duration_s=_field(text, "Time taken for tests") or 0.0,
        requests_per_s=rps,
        mean_latency_ms=float(mean.group(1)) if mean else float("nan"),
        percentiles_ms=percentiles,
    )


def run_ab(load: AbLoad, requests: int | None = None, log: Path | None = None) -> AbResult:
    """Run ab once and parse it; the raw report goes to `log` when given."""
    proc = subprocess.run(
        ab_command(load, requests), capture_output=True, text=True, check=False,
        timeout=load.timeout_s + 60 + (requests or load.requests),
    )
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(proc.stdout + ("\n--- stderr ---\n" + proc.stderr if proc.stderr else ""))
    try:
        return parse_ab_output(proc.stdout)
    except ValueError as exc:
        raise RuntimeError(f"ab exited {proc.returncode}: {proc.stderr.strip()}") from exc
