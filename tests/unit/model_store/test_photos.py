"""The real inputs int8 / bf16 archives carry (model_store/photos.py): what goes in, the gate
that comes with it, and the evaluation set never overlapping the calibration one."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytest.importorskip("skimage", reason="scikit-image ships the photos ([demo] extra)")

from torchserve_cpu.handlers.model_config import parse_settings  # noqa: E402
from torchserve_cpu.handlers.optimize.accuracy import CLASSIFIER_GATE
from torchserve_cpu.model_store.photos import (  # noqa: E402
    CALIB_GRID,
    EVAL_GRID,
    IMAGE_GATE,
    archive_inputs,
    sentences,
)


def test_image_archives_get_76_photos_and_the_classifier_gate(tmp_path: Path) -> None:
    config = {"handler": {"task": "image_classification", "dtype": "int8"}}
    [folder] = archive_inputs(config, tmp_path)
    photos = sorted((folder / "calibration").iterdir())
    assert len(photos) == 76 and photos[0].name == "000.jpg"
    assert config["handler"]["calibration"] == "calibration"
    assert config["handler"]["accuracy_gate"] == IMAGE_GATE
    # what the worker reads back from the archive's model-config.yaml is CLASSIFIER_GATE
    written = yaml.safe_load(yaml.safe_dump(config))
    assert parse_settings(written["handler"]).gate == CLASSIFIER_GATE


def test_random_weight_models_get_no_top1_gate_and_bf16_no_inputs(tmp_path: Path) -> None:
    int8 = {"handler": {"task": "image_classification", "dtype": "int8"}}
    [folder] = archive_inputs(int8, tmp_path / "a", trained=False)
    assert len(list((folder / "calibration").iterdir())) == 76  # int8 must calibrate
    assert "accuracy_gate" not in int8["handler"]
    bf16 = {"handler": {"task": "image_classification", "dtype": "bf16"}}
    assert archive_inputs(bf16, tmp_path / "b", trained=False) == []
    assert bf16["handler"] == {"task": "image_classification", "dtype": "bf16"}


def test_text_archives_get_sentences_and_own_settings_win(tmp_path: Path) -> None:
    config = {"handler": {"task": "text_embedding", "dtype": "bf16"}}
    [folder] = archive_inputs(config, tmp_path / "a")
    assert len(list((folder / "calibration").iterdir())) == 16
    assert "accuracy_gate" not in config["handler"]
    assert archive_inputs({"handler": {"dtype": "fp32"}}, tmp_path / "b") == []
    own = {"handler": {"dtype": "int8", "calibration": "mine"}}
    assert archive_inputs(own, tmp_path / "c") == [] and own["handler"]["calibration"] == "mine"
    gate = {"handler": {"dtype": "int8", "accuracy_gate": False}}
    archive_inputs(gate, tmp_path / "d")
    assert gate["handler"]["accuracy_gate"] is False


def test_evaluation_and_calibration_transforms_differ() -> None:
    assert not set(EVAL_GRID) & set(CALIB_GRID)
    assert len(EVAL_GRID) == 16 and len(sentences()) == 50
