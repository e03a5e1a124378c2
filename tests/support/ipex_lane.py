"""The IPEX lane's tests run only where Intel Extension for PyTorch really imports.

That is the lane venv (torch 2.8 + IPEX 2.8, `bash scripts/ipex_lane.sh test`); in the main
venv (torch 2.13) they skip, saying why and how to run them.
"""

from __future__ import annotations

import pytest

from torchserve_cpu.handlers.optimize.ipex_support import probe_ipex

IPEX = probe_ipex()

requires_ipex = pytest.mark.skipif(
    not IPEX.usable,
    reason=f"IPEX lane only: intel_extension_for_pytorch is not usable here ({IPEX.reason}); "
           "run `bash scripts/ipex_lane.sh test`",
)
