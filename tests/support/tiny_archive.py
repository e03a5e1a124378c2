"""Tiny models archived with the product handler, as a user would archive their own: a conv
net (images) and a tabular MLP (task tensor), for tests that need the real handler but not a
big model."""

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


#: 8 features in, 3 classes out: what a tabular model looks like
TABULAR_MODEL = '''
import torch


class TabularMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(),
                                       torch.nn.Linear(32, 3))

    def forward(self, x):
        return self.net(x)
'''

TABULAR_CONFIG = ("minWorkers: 1\nmaxWorkers: 1\nhandler:\n  task: tensor\n"
                  "  input_shape: [8]\n  warmup_iterations: 1\n")


def archive_model(bin_dir: Path, handler: str, work: Path, store: Path, name: str,
                  model_source: str, config: str, env: dict[str, str] | None = None) -> Path:
    """`store/<name>.mar` of the one nn.Module in `model_source` (seeded weights) with
    `config` as model-config.yaml, built in `work` with the tools of the environment
    `bin_dir`, exactly as a user runs torch-model-archiver."""
    run = {"cwd": work, "env": env, "check": True, "timeout": 300}
    work.mkdir(parents=True, exist_ok=True)
    (work / "model.py").write_text(model_source)
    (work / "model-config.yaml").write_text(config)
    subprocess.run([str(bin_dir / "python"), "-c",
                    "import inspect, torch, model; torch.manual_seed(0); "
                    "(cls,) = [c for _, c in inspect.getmembers(model, inspect.isclass) "
                    "if issubclass(c, torch.nn.Module) and c.__module__ == 'model']; "
                    f"torch.save(cls().state_dict(), '{name}.pt')"], **run)
    store.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(bin_dir / "torch-model-archiver"), "--model-name", name,
                    "--version", "1.0", "--model-file", "model.py", "--serialized-file",
                    f"{name}.pt", "--handler", handler, "--config-file", "model-config.yaml",
                    "--export-path", str(store), "--force"], **run)
    return store / f"{name}.mar"


def build_tiny_archive(bin_dir: Path, handler: str, work: Path, store: Path,
                       env: dict[str, str] | None = None, workers: int = 1) -> Path:
    """`store/tiny.mar`, built in `work` with the tools of the environment `bin_dir`."""
    return archive_model(bin_dir, handler, work, store, "tiny", TINY_MODEL,
                         TINY_CONFIG.format(workers=workers), env)
