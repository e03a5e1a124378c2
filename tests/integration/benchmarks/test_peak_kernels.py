"""The native peak kernels on this machine: every one of its architecture builds with this
gcc, and the ones its CPU has run and report a rate."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from benchmarks.peak import NATIVE_KERNELS, kernel_binary, run_kernel, select_kernels
from torchserve_cpu.launcher.host import ARM, read_cpu_facts

CHOICES = select_kernels(read_cpu_facts())


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
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


CROSS = "aarch64-linux-gnu-gcc"
ARM_KERNELS = [k for k in NATIVE_KERNELS if k.arch == ARM]


@pytest.mark.skipif(shutil.which(CROSS) is None or shutil.which("qemu-aarch64") is None,
                    reason="needs gcc-aarch64-linux-gnu and qemu-user (apt)")
@pytest.mark.parametrize("kernel", ARM_KERNELS, ids=[k.name for k in ARM_KERNELS])
def test_arm_kernel_builds_and_runs_under_emulation(kernel, tmp_path) -> None:
    """No arm machine here: the arm kernels are cross-built and run on qemu's `max` CPU
    (SVE 256-bit like Graviton 3), which checks they execute, not how fast."""
    binary = kernel_binary(kernel, tmp_path, compiler=CROSS)
    done = subprocess.run(
        ["qemu-aarch64", "-cpu", "max,sve256=on", str(binary), "1000"], capture_output=True,
        text=True, timeout=120,
        env={"OMP_NUM_THREADS": "1", "QEMU_LD_PREFIX": "/usr/aarch64-linux-gnu"},
    )
    assert done.returncode == 0 and float(done.stdout) > 0, done.stderr
