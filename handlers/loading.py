"""Load the archived model: eager model file + state dict, or a TorchScript file.

TorchServe unpacks the .mar into `model_dir`; the manifest names the model file and
the serialized weights. State dicts load with `weights_only=True`, so a weights file
can never run code.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path

import torch
from torch import nn


def model_class_from_file(model_file: Path) -> type[nn.Module]:
    """The one nn.Module subclass defined in `model_file` (TorchServe's rule)."""
    module_name = model_file.stem
    spec = importlib.util.spec_from_file_location(module_name, model_file)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import model file {model_file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    classes = [
        member
        for _, member in inspect.getmembers(module, inspect.isclass)
        if member.__module__ == module_name and issubclass(member, nn.Module)
    ]
    if len(classes) != 1:
        names = [cls.__name__ for cls in classes]
        raise ValueError(
            f"model file {model_file.name} must define exactly one nn.Module, has {names}"
        )
    return classes[0]


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ImportError(
                f"{path.name} needs the safetensors package: pip install 'torchserve-cpu[text]'"
            ) from None

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path.name} does not hold a state dict (got {type(state).__name__})")
    return state


def load_model(model_dir: Path, manifest: dict) -> nn.Module:
    """The model in eval mode (TorchScript when the archive has no model file)."""
    model_info = manifest.get("model", {})
    serialized = model_info.get("serializedFile")
    model_file = model_info.get("modelFile")
    if model_file:
        model = model_class_from_file(model_dir / model_file)()
        if serialized:
            model.load_state_dict(load_state_dict(model_dir / serialized))
        return model.eval()
    if not serialized:
        raise ValueError("the archive has neither a model file nor a serialized file")
    return torch.jit.load(str(model_dir / serialized), map_location="cpu").eval()
