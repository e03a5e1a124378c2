"""IPEX installed but built for another torch: the handler takes the native path and says why.

Intel Extension for PyTorch 2.8.0 under torch 2.13 raises AttributeError at import. Checked
with a stand-in package (always) and with the real wheel in a subprocess (when pip can
fetch it), through the same probe and optimizer the handler uses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support.ipex_wheel import FAKE_DIR, real_ipex_dir
from tests.support.models import eager_model
from torchserve_cpu.handlers.model_config import parse_settings
from torchserve_cpu.handlers.optimize.ipex_support import probe_ipex
from torchserve_cpu.handlers.optimize.optimizer import optimize

REPO = Path(__file__).resolve().parents[3]
MODULE = "intel_extension_for_pytorch"

# Runs in a subprocess so the real IPEX's failed import cannot leave state in this one.
PROBE_AND_OPTIMIZE = """
import json, logging, torch
from torchserve_cpu.handlers.optimize.ipex_support import probe_ipex
from torchserve_cpu.handlers.optimize.optimizer import optimize
from torchserve_cpu.handlers.model_config import parse_settings
from tests.support.models import eager_model
status = probe_ipex()
chosen = optimize(eager_model("resnet50"), (torch.rand(1, 3, 224, 224),),
                  parse_settings({"task": "image_classification"}), status, True)
print(json.dumps({"usable": status.usable, "reason": status.reason,
                  "plan": chosen.plan.describe(), "applied": list(chosen.stage.applied),
                  "notes": list(chosen.stage.notes), "rejected": list(chosen.rejected)}))
"""


@pytest.fixture
def fake_ipex(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(FAKE_DIR))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)


def check_native_path(reason: str, plan: str, applied: list[str], notes: list[str],
                      rejected: list[str]) -> None:
    """The default pipeline was kept, with native in place of ipex, and the notes say why."""
    assert plan.startswith("default[ipex_or_native>"), (plan, rejected)
    assert applied[0] == "native"
    assert not rejected
    assert f"ipex skipped: {reason}" in notes
    assert "native: native (conv+bn folded)" in notes


def test_stand_in_probe_names_error_and_versions(fake_ipex: None) -> None:
    status = probe_ipex()
    assert not status.usable
    assert status.reason.startswith("import failed (AttributeError: ")
    assert "intel-extension-for-pytorch 2.8.0 installed, torch 2." in status.reason


def test_stand_in_optimizer_takes_native_path(fake_ipex: None) -> None:
    status = probe_ipex()
    chosen = optimize(eager_model("resnet50"), (torch.rand(1, 3, 224, 224),),
                      parse_settings({"task": "image_classification"}), status, True)
    stage = chosen.stage
    check_native_path(status.reason, chosen.plan.describe(), list(stage.applied),
                      list(stage.notes), list(chosen.rejected))


def test_real_mismatched_wheel_takes_native_path() -> None:
    site, why = real_ipex_dir()
    if site is None:
        pytest.skip(f"real IPEX wheel unavailable: {why}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    result = subprocess.run([sys.executable, "-c", PROBE_AND_OPTIMIZE], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    # IPEX's own complaint comes first on stdout; our JSON is the last line.
    assert "needs to work with PyTorch 2.8" in result.stdout
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert not found["usable"]
    assert found["reason"].startswith("import failed (AttributeError"), found["reason"]
    assert "intel-extension-for-pytorch 2.8.0 installed" in found["reason"]
    check_native_path(found["reason"], found["plan"], found["applied"], found["notes"],
                      found["rejected"])
