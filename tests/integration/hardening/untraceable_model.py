"""A tiny image classifier that torch.jit.trace cannot handle: its branch is `torch.cond`,
which runs eagerly but refuses tracing. The handler must fall back to eager."""

from __future__ import annotations

import torch
from torch import nn


class BranchingNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        # Data-dependent control flow, written the way torch.export wants it.
        y = torch.cond(y.mean() > 0, lambda t: t.relu(), lambda t: (-t).relu(), (y,))
        return self.fc(y.mean((2, 3)))
