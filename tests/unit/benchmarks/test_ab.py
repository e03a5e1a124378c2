"""ab's text report, parsed from reports saved on this machine."""

from pathlib import Path

import pytest

from benchmarks.ab import AbLoad, ab_command, parse_ab_output, warmup_requests

DATA = Path(__file__).parent / "data"

FAILED = """Complete requests:      100
Failed requests:        7
   (Connect: 0, Receive: 0, Length: 5, Exceptions: 2)
Non-2xx responses:      3
Requests per second:    12.50 [#/sec] (mean)
Time per request:       640.000 [ms] (mean)
"""


def test_torchserve_report() -> None:
    result = parse_ab_output((DATA / "ab_tiny.txt").read_text())
    assert result.complete == 12
    assert result.errors == 0
    assert result.requests_per_s == pytest.approx(19.73)
    assert result.mean_latency_ms == pytest.approx(101.349)
    assert result.duration_s > 0
    assert [result.percentile(p) for p in (50, 90, 99, 100)] == [67, 84, 250, 250]


def test_non_2xx_are_errors() -> None:
    result = parse_ab_output((DATA / "ab_non2xx.txt").read_text())
    assert result.non_2xx == 20
    assert result.errors == 20


def test_length_mismatches_are_not_errors() -> None:
    """Classifier answers differ in length; ab counts that as 'failed', we do not."""
    result = parse_ab_output(FAILED)
    assert (result.failed, result.length_mismatches, result.non_2xx) == (7, 5, 3)
    assert result.errors == 2 + 3


def test_document_length_is_not_a_failure_count() -> None:
    result = parse_ab_output((DATA / "ab_ok.txt").read_text())
    assert result.length_mismatches == 0
    assert result.errors == 0


def test_not_a_report() -> None:
    with pytest.raises(ValueError, match="not an ab report"):
        parse_ab_output("ab: invalid URL\n")


def test_command_is_keepalive_and_posts() -> None:
    load = AbLoad("http://127.0.0.1:1/predictions/m", Path("in.jpg"), "image/jpeg", 8, 400)
    argv = ab_command(load)
    assert argv[:2] == ["ab", "-k"]
    assert argv[argv.index("-p") + 1] == "in.jpg"
    assert argv[argv.index("-T") + 1] == "image/jpeg"
    assert argv[argv.index("-n") + 1] == "400"
    warm = ab_command(load, requests=4)
    assert warm[warm.index("-c") + 1] == "4"  # never more clients than requests


def test_warmup_is_a_tenth_but_a_full_round() -> None:
    assert warmup_requests(10000, 100) == 1000
    assert warmup_requests(40, 8) == 8
