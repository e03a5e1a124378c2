"""The native peak kernels on this machine: every one of its architecture builds with this
gcc, and the ones its CPU has run and report a rate."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from benchmarks.peak import kernel_binary, run_kernel, select_kernels
from torchserve_cpu.handlers.optimize.precision import read_cpu_facts

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
CHOICES = select_kernels(read_cpu_facts())


@pytest.mark.parametrize("choice", CHOICES, ids=[c.kernel.name for c in CHOICES])
def test_kernel_builds_and_runs_where_the_cpu_has_it(choice, tmp_path) -> None:
    try:
        binary = kernel_binary(choice.kernel, tmp_path)  # building never executes it
    except subprocess.CalledProcessError as error:
        pytest.fail(error.stderr.decode())
    assert binary is not None and binary.exists()
    if choice.runs:
        rate = run_kernel(choice.kernel, 1, 20_000)
        assert isinstance(rate, float) and rate > 0, rate
