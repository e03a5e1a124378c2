"""Security properties of what we ship: loopback-only configs, weights that cannot run code."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch

from torchserve_cpu.handlers.loading import load_state_dict
from torchserve_cpu.launcher.torchserve.properties import read_properties

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "config").glob("*.properties"))
# Set explicitly in every config, so the binding never depends on TorchServe's defaults.
ADDRESS_KEYS = ("inference_address", "management_address", "metrics_address",
                "grpc_inference_address", "grpc_management_address")


def host_of(value: str) -> str | None:
    """'http://127.0.0.1:8080' and '127.0.0.1' both name the host 127.0.0.1."""
    return urlparse(value).hostname if "://" in value else value.strip()


def test_there_are_configs_to_check() -> None:
    assert CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=[path.name for path in CONFIGS])
def test_shipped_config_binds_loopback_only(path: Path) -> None:
    properties = read_properties(path)
    assert set(ADDRESS_KEYS) <= set(properties), f"{path.name} leaves an address to defaults"
    addresses = {k: v for k, v in properties.items() if k.endswith("_address")}
    assert {k: host_of(v) for k, v in addresses.items()} == dict.fromkeys(addresses, "127.0.0.1")


class Payload:
    """Pickles to a call of os.mkdir: proof that loading ran code, and harmless."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def test_weights_that_would_run_code_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    weights = tmp_path / "model.pt"
    torch.save({"fc.weight": torch.zeros(2, 2), "extra": Payload(marker)}, weights)
    with pytest.raises(pickle.UnpicklingError, match="[Ww]eights only load failed"):
        load_state_dict(weights)
    assert not marker.exists()
    # The file really is malicious: an unrestricted load runs its code.
    torch.load(weights, map_location="cpu", weights_only=False)
    assert marker.is_dir()


def test_plain_state_dict_still_loads(tmp_path: Path) -> None:
    weights = tmp_path / "model.pt"
    torch.save({"fc.weight": torch.ones(2, 2)}, weights)
    assert torch.equal(load_state_dict(weights)["fc.weight"], torch.ones(2, 2))
