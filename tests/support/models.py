"""The real models and model directories, for tests that run them outside TorchServe."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import torch

from torchserve_cpu.handlers.loading import load_state_dict, model_class_from_file
from torchserve_cpu.model_store.build import MODELS, tokenizer_files, weights_path


def _model_class(name: str) -> type[torch.nn.Module]:
    """The class TorchServe will instantiate from the model's archived model file."""
    return model_class_from_file(MODELS[name].source_dir / "model.py")


@functools.cache
def _state(name: str) -> dict[str, torch.Tensor]:
    return load_state_dict(weights_path(MODELS[name]))


def eager_model(name: str) -> torch.nn.Module:
    """A fresh eager copy of an archived model with its archived weights."""
    model = _model_class(name)()
    model.load_state_dict(_state(name))
    return model.eval()


def model_dir_for(name: str, tmp_path: Path) -> Path:
    """A directory holding what the model's task reads (tokenizer for text models)."""
    if name != "resnet50":
        for path in tokenizer_files():
            shutil.copy(path, tmp_path / path.name)
    return tmp_path
