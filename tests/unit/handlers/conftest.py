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
