"""A tiny conv net archived with the product handler, as a user would archive their own
model: for tests that need the real handler but not a big model."""

from __future__ import annotations

import subprocess
from pathlib import Path

TINY_MODEL = '''
import torch


class TinyConvNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.mean(dim=(2, 3)))
'''

TINY_CONFIG = (
    "minWorkers: {workers}\nmaxWorkers: {workers}\nhandler:\n  task: image_classification\n"
    "  topk: 2\n  image_size: 32\n  resize_size: 36\n"
)


def build_tiny_archive(bin_dir: Path, handler: str, work: Path, store: Path,
                       env: dict[str, str] | None = None, workers: int = 1) -> Path:
    """`store/tiny.mar`, built in `work` with the tools of the environment `bin_dir`."""
    run = {"cwd": work, "env": env, "check": True, "timeout": 300}
    (work / "model.py").write_text(TINY_MODEL)
    (work / "model-config.yaml").write_text(TINY_CONFIG.format(workers=workers))
    subprocess.run([str(bin_dir / "python"), "-c",
                    "import torch, model; torch.manual_seed(0); "
                    "torch.save(model.TinyConvNet().state_dict(), 'tiny.pt')"], **run)
    store.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(bin_dir / "torch-model-archiver"), "--model-name", "tiny",
                    "--version", "1.0", "--model-file", "model.py", "--serialized-file",
                    "tiny.pt", "--handler", handler, "--config-file", "model-config.yaml",
                    "--export-path", str(store), "--force"], **run)
    return store / "tiny.mar"
