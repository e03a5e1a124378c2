"""Named ranges around each request stage, visible in VTune (ITT) and torch.profiler.

ITT calls cost next to nothing when no collector is attached, so ranges are on by
default; op-level ITT (emit_itt) is heavier and opt-in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.profiler import record_function

ITT_AVAILABLE = torch.profiler.itt.is_available()


@contextlib.contextmanager
def stage_range(name: str, itt: bool = True) -> Iterator[None]:
    """An ITT task and a profiler record_function, both called `name`."""
    with record_function(name):
        if itt and ITT_AVAILABLE:
            torch.profiler.itt.range_push(name)
            try:
                yield
            finally:
                torch.profiler.itt.range_pop()
        else:
            yield


def op_ranges(enabled: bool) -> contextlib.AbstractContextManager[object]:
    """ITT ranges for every aten op inside (torch.autograd.profiler.emit_itt)."""
    if enabled and ITT_AVAILABLE:
        return torch.autograd.profiler.emit_itt()
    return contextlib.nullcontext()
