"""Class names (index_to_name.json) and the answer TorchServe's own classifiers give.

The stock handlers answer each item with `{label: probability}` (ts/utils/util.py
map_class_to_label): image_classifier for its top-k classes, highest first
(torch.topk), text_classifier for every class in index order. Labels come from
index_to_name.json as TorchServe reads it (ts/utils/util.py load_label_mapping: a list
value means its last name; `{"object_type_names": [...]}` is the older form); without the
file a class is named by its index, `"3"`. Where the file has no name for a class, the
stock handler fails the request with a KeyError; here that class is named by its index and
the load warns (`label_problem`), and `torchserve-cpu check` refuses the archive.
"""

from __future__ import annotations

import json
from pathlib import Path

LABELS_FILE = "index_to_name.json"


def read_labels(model_dir: Path) -> dict[int, str] | None:
    """Index -> name as TorchServe reads the archive's index_to_name.json; None without it.

    A file that is not such a mapping raises ValueError naming it."""
    path = model_dir / LABELS_FILE
    if not path.exists():
        return None
    try:
        mapping = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{LABELS_FILE}: not JSON: {error}") from None
    if isinstance(mapping, dict) and isinstance(mapping.get("object_type_names"), list):
        mapping = dict(enumerate(mapping["object_type_names"]))
    if not isinstance(mapping, dict):
        raise ValueError(f'{LABELS_FILE}: expected {{"0": "name", ...}}, got '
                         f"{type(mapping).__name__}")
    labels = {}
    for key, value in mapping.items():
        name = value[-1] if isinstance(value, list) and value else value
        if not isinstance(name, str) or not str(key).isdigit():
            raise ValueError(f'{LABELS_FILE}: expected {{"0": "name", ...}}, got '
                             f"{key!r}: {value!r}")
        labels[int(key)] = name
    return labels


def label(labels: dict[int, str] | None, index: int) -> str:
    """The name of class `index`: its label, or the index as text (as TorchServe without
    a mapping)."""
    return (labels or {}).get(index, str(index))


def stock_answer(probabilities: list[float], classes: list[int],
                 labels: dict[int, str] | None) -> dict[str, float]:
    """`{label: probability}` in the order given, as map_class_to_label builds it (two
    classes with one name keep the first one's place and the last one's value)."""
    return {label(labels, index): probability
            for index, probability in zip(classes, probabilities)}


def label_problem(labels: dict[int, str] | None, classes: int) -> str | None:
    """What is wrong with the labels of a classifier with `classes` outputs; None if fine."""
    if labels is None:
        return (f"no {LABELS_FILE} in the archive: answers name the {classes} classes by "
                f'index ("0", "1", ...); add it with --extra-files ({{"0": "cat", ...}})')
    missing = [index for index in range(classes) if index not in labels]
    extra = sorted(index for index in labels if index >= classes)
    if missing or extra:
        return (f"{LABELS_FILE} names {len(labels)} classes but the model has {classes} "
                f"outputs (unnamed: {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"beyond the outputs: {extra[:5]}{'...' if len(extra) > 5 else ''}): "
                "unnamed classes are answered by their index")
    return None
