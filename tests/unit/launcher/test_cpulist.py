from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from torchserve_cpu.launcher.errors import LauncherError
from torchserve_cpu.launcher.host.cpulist import format_cpulist, parse_cpulist


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0-3,8", (0, 1, 2, 3, 8)), ("", ()), ("5\n", (5,)), ("2,0-1", (0, 1, 2))],
)
def test_parse(text: str, cpus: tuple[int, ...]) -> None:
    assert parse_cpulist(text) == cpus


@pytest.mark.parametrize("text", ["3-1", "x", "1-", "-1"])
def test_parse_errors_name_the_source(text: str) -> None:
    with pytest.raises(LauncherError, match="node7/cpulist"):
        parse_cpulist(text, "node7/cpulist")


@given(st.sets(st.integers(0, 300)))
def test_round_trip(cpus: set[int]) -> None:
    assert parse_cpulist(format_cpulist(cpus)) == tuple(sorted(cpus))


def test_format() -> None:
    assert format_cpulist([5, 0, 1, 2, 7, 8]) == "0-2,5,7-8"
