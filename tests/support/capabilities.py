"""The saved CPU capability sets of tests/data/capabilities/ as CpuFacts records."""

from __future__ import annotations

import json
from pathlib import Path

from torchserve_cpu.launcher.host import CpuFacts, normal_arch, parse_cpuinfo

DIRECTORY = Path(__file__).resolve().parents[1] / "data" / "capabilities"
NAMES = ("zen3", "zen4", "sapphire_rapids", "graviton3")


def capability_set(name: str) -> dict:
    return json.loads((DIRECTORY / f"{name}.json").read_text())


def saved_facts(name: str) -> CpuFacts:
    """Facts as read_cpu_facts would read them there: the saved lines through the parser."""
    data = capability_set(name)
    text = (f"processor\t: 0\nmodel name\t: {data['model_name']}\n"
            f"{data['cpuinfo_key']}\t\t: {data['cpuinfo_flags']}\n\nprocessor\t: 1\n")
    model, flags = parse_cpuinfo(text)
    return CpuFacts(normal_arch(data["machine"]), flags, model)
