"""Fixtures for handler tests that run several models in one process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ts.metrics.metric_cache_abstract import MetricCacheAbstract


@pytest.fixture(autouse=True)
def fresh_metric_dimensions() -> Iterator[None]:
    """TorchServe's metric methods take `dimensions: list = []` and append ModelName to it
    (ts/metrics/metric_cache_abstract.py, _add_default_dims), so the first model to record a
    HandlerTime names every later one in the process. A worker serves one model; tests serve
    several, so the shared defaults are emptied after each test."""
    yield
    for member in vars(MetricCacheAbstract).values():
        for default in getattr(member, "__defaults__", None) or ():
            if isinstance(default, list):
                default.clear()


@pytest.fixture(autouse=True)
def private_int8_host_cache(tmp_path_factory: pytest.TempPathFactory,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """build_served_model keeps an int8 archive's package in the host's cache: the tests
    use one of their own, not ~/.cache/torchserve-cpu."""
    monkeypatch.setenv("TSCPU_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "tscpu-cache"))
