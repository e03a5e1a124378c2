"""machine.json: every fact a result set records about its CPU, as JSON."""

from __future__ import annotations

import json

from benchmarks.machine import machine_facts


def test_machine_facts_are_json_and_carry_the_cpu_facts() -> None:
    facts = json.loads(json.dumps(machine_facts()))  # raised on torch's mappingproxy once
    assert facts["cpu_model"] and facts["cpu_flags_all"]
    assert {"native_bf16", "int8_dot_products", "int8_7bit_activations"} <= set(facts)
    capabilities = facts["torch_cpu_capabilities"]
    assert capabilities is None or isinstance(capabilities, dict)
