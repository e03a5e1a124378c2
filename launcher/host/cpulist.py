"""The kernel's cpulist format ("0-3,8,10-11"), used by sysfs, cgroups and /proc."""

from __future__ import annotations

from collections.abc import Iterable

from torchserve_cpu.launcher.errors import LauncherError


def parse_cpulist(text: str, what: str = "cpu list") -> tuple[int, ...]:
    """Sorted CPU ids of a cpulist; `what` names the source in the error message.

    The format is documented in Documentation/admin-guide/cputopology.rst; an empty
    string is a valid empty list (a CPU-less NUMA node has an empty `cpulist`).
    """
    cpus: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                low, high = (int(x) for x in part.split("-", 1))
                if high < low:
                    raise ValueError(part)
                cpus.update(range(low, high + 1))
            else:
                cpus.add(int(part))
        except ValueError:
            raise LauncherError(f"{what}: {text.strip()!r} is not a cpulist like 0-3,8") from None
    if any(cpu < 0 for cpu in cpus):
        raise LauncherError(f"{what}: negative CPU id in {text.strip()!r}")
    return tuple(sorted(cpus))


def format_cpulist(cpus: Iterable[int]) -> str:
    """The shortest cpulist for a set of CPU ids, e.g. (0, 1, 2, 5) -> "0-2,5"."""
    ordered = sorted(set(cpus))
    ranges: list[str] = []
    start = previous = None
    for cpu in ordered:
        if previous is not None and cpu == previous + 1:
            previous = cpu
            continue
        if start is not None:
            ranges.append(_range(start, previous))
        start = previous = cpu
    if start is not None:
        ranges.append(_range(start, previous))
    return ",".join(ranges)


def _range(start: int, end: int | None) -> str:
    return str(start) if end == start else f"{start}-{end}"
