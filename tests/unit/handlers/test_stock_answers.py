"""The default answer is TorchServe's own: compared with ts/utils/util.py map_class_to_label
and load_label_mapping on the same probabilities and the same index_to_name.json, exactly
as image_classifier.py and text_classifier.py call them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from ts.utils.util import load_label_mapping, map_class_to_label

from tests.support.torchserve_calls import tiny_model_context
from torchserve_cpu.handlers.served_model import build_served_model
from torchserve_cpu.handlers.settings import HandlerSettings
from torchserve_cpu.handlers.tasks.image import ImageClassification
from torchserve_cpu.handlers.tasks.labels import label_problem, read_labels
from torchserve_cpu.handlers.tasks.text import TextTask
from torchserve_cpu.model_store.build import minilm_dir

LOGITS = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5, 2.5, -0.2],
                       [4.0, 0.0, 1.0, -3.0, 1.0, 0.0, 0.3]])
NAMES = {"0": "tench", "1": ["n01443537", "goldfish"], "2": "shark", "3": "tiger shark",
         "4": "hammerhead", "5": "ray", "6": "stingray"}


def stock_image(logits: torch.Tensor, mapping: dict | None, topk: int) -> list[dict]:
    """ts/torch_handler/image_classifier.py postprocess, line for line."""
    ps = torch.nn.functional.softmax(logits, dim=1)
    probs, classes = torch.topk(ps, topk, dim=1)
    return map_class_to_label(probs.tolist(), mapping, classes.tolist())


@pytest.mark.parametrize("with_labels", [True, False])
def test_image_answer_is_image_classifiers(tmp_path: Path, with_labels: bool) -> None:
    if with_labels:
        (tmp_path / "index_to_name.json").write_text(json.dumps(NAMES))
    mapping = load_label_mapping(str(tmp_path / "index_to_name.json"))
    for topk in (5, 3, 1):
        ours = ImageClassification(HandlerSettings(topk=topk), tmp_path).answer(LOGITS)
        theirs = stock_image(LOGITS, mapping, topk)
        assert ours == theirs
        assert [list(answer) for answer in ours] == [list(answer) for answer in theirs]
    first = ImageClassification(HandlerSettings(), tmp_path).answer(LOGITS)[0]
    assert list(first) == (["goldfish", "ray", "tiger shark", "hammerhead", "tench"]
                           if with_labels else ["1", "5", "3", "4", "0"])


def test_text_answer_is_text_classifiers(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_bytes((minilm_dir() / "tokenizer.json").read_bytes())
    (tmp_path / "index_to_name.json").write_text(json.dumps(NAMES))
    ours = TextTask(HandlerSettings(task="text_classification"), tmp_path).answer(LOGITS)
    # text_classifier.py postprocess: softmax over the classes, every class in index order
    theirs = map_class_to_label(torch.nn.functional.softmax(LOGITS, dim=1).tolist(),
                                load_label_mapping(str(tmp_path / "index_to_name.json")))
    assert ours == theirs and [list(a) for a in ours] == [list(a) for a in theirs]


def test_a_short_labels_file_names_the_rest_by_index(tmp_path: Path) -> None:
    """TorchServe fails such a request (KeyError); here the class is named by its index."""
    (tmp_path / "index_to_name.json").write_text('{"0": "a", "1": "b", "2": "c"}')
    mapping = load_label_mapping(str(tmp_path / "index_to_name.json"))
    with pytest.raises(KeyError):
        stock_image(LOGITS, mapping, 5)
    (answer, _) = ImageClassification(HandlerSettings(), tmp_path).answer(LOGITS)
    assert list(answer) == ["b", "5", "3", "4", "a"]


def test_label_problems(tmp_path: Path) -> None:
    assert label_problem({0: "a", 1: "b"}, 2) is None
    assert "no index_to_name.json" in label_problem(None, 5)
    short = label_problem({0: "a", 1: "b", 2: "c"}, 5)
    assert short.startswith("index_to_name.json names 3 classes but the model has 5 outputs")
    assert "unnamed: [3, 4]" in short
    assert "beyond the outputs: [2]" in label_problem({0: "a", 1: "b", 2: "c"}, 2)
    (tmp_path / "index_to_name.json").write_text(json.dumps(NAMES))
    assert read_labels(tmp_path)[1] == "goldfish"


def test_a_labels_file_of_the_wrong_size_warns_once_at_load(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "index_to_name.json").write_text('{"0": "a", "1": "b", "2": "c"}')
    context = tiny_model_context(tmp_path, {})  # the tiny conv net has 4 classes
    section = {"optimize": "eager", "image_size": 8, "resize_size": 8}
    with caplog.at_level(logging.WARNING):
        served = build_served_model(tmp_path, context.manifest, section)
    expected = ("index_to_name.json names 3 classes but the model has 4 outputs "
                "(unnamed: [3], beyond the outputs: []): unnamed classes are answered by "
                "their index")
    assert served.warnings == (expected,)
    assert [r.getMessage() for r in caplog.records if "index_to_name" in r.getMessage()] \
        == [expected]


def test_detailed_answer_on_request(tmp_path: Path) -> None:
    (tmp_path / "index_to_name.json").write_text(json.dumps(NAMES))
    (answer, _) = ImageClassification(HandlerSettings(topk=2, response="detailed"),
                                      tmp_path).answer(LOGITS)
    probabilities = torch.softmax(LOGITS[0], 0)
    assert answer == {"topk": [
        {"index": 1, "label": "goldfish", "probability": float(probabilities[1])},
        {"index": 5, "label": "ray", "probability": float(probabilities[5])}]}
