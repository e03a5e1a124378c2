"""The `handler:` section of model-config.yaml, checked once into a frozen settings object.

Every mistake raises ValueError naming the key (`handler.dtype`, ...) and the accepted
values, so a typo fails the worker's start-up with a readable message instead of
silently running the default. Task names live with the tasks (handlers.tasks.TASKS),
step and preset names with the steps (handlers.optimize.pipeline): both import this module,
so the names come in as a `Vocabulary` (handlers.model_config passes the real one).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType

DTYPES = ("fp32", "bf16", "int8", "auto")  # auto: the fastest this CPU runs that passes
#: `stock`: TorchServe's own answer ({label: probability}, ts/utils/util.py
#: map_class_to_label), so clients of image_classifier / text_classifier keep working;
#: `detailed`: index, label and probability (image), or label, logits, probabilities (text)
RESPONSES = ("stock", "detailed")
#: `handler.input_dtype` of the tensor task (torch's names)
INPUT_DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16",
                "int8", "uint8", "bool")
# ImageNet's per-channel mean and std (torchvision's 0.485, ... and 0.229, ... times 255)
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
TRUNCATION = ("truncate", "reject")


@dataclass(frozen=True)
class GateThresholds:
    """How close bf16 outputs must stay to fp32 eager on the example inputs."""

    min_cosine: float = 0.99
    max_abs_diff: float = 0.25  # relative to the reference's largest magnitude (at least 1)
    topk: int = 5
    min_topk_agreement: float = 0.6  # mean overlap of the top-k index sets
    # A trained classifier's figures (handlers.accuracy; off at these defaults). Inputs where
    # fp32 is confident: its top-1 probability beats its top-2 by >= confident_margin.
    confident_margin: float = 0.1
    min_confident_agreement: float = 0.0  # top-1 agreement on the confident inputs
    min_top1_in_top5: float = 0.0  # share of inputs whose fp32 top-1 is in the candidate's top-5
    min_mean_cosine: float = -1.0  # mean per-sample cosine (min_cosine: the worst sample)


#: `accuracy_gate: off` (YAML false): a reduced-precision model is served unchecked, noted
#: as speed only; it must still run and give finite outputs of the right shape
GATE_OFF = GateThresholds(min_cosine=-1.0, max_abs_diff=float("inf"), topk=1,
                          min_topk_agreement=0.0)


@dataclass(frozen=True)
class HandlerSettings:
    task: str = "image_classification"
    optimize: tuple[str, ...] | str = "default"
    dtype: str = "fp32"
    gate: GateThresholds = field(default_factory=GateThresholds)
    example_batch_size: int = 1
    warmup_iterations: int = 3
    topk: int = 5
    response: str = "stock"  # RESPONSES
    # tensor: one item's shape without the batch dimension, and its dtype
    input_shape: tuple[int, ...] | None = None
    input_dtype: str = "float32"
    # image
    image_size: int = 224
    resize_size: int = 256
    max_image_pixels: int = 40_000_000
    # model input = (pixel - mean) / std per channel R, G, B, on 0..255 pixel values
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # text
    max_length: int = 128
    truncation: str = "truncate"
    # profiling
    itt_ranges: bool = True
    emit_itt: bool = False
    # model kind: None lets the handler decide (conv nets get channels-last)
    channels_last: bool | None = None
    # real inputs in the archive (a folder of request bodies or a .pt of model inputs):
    # int8 calibration and the accuracy gate's check (handlers.archive_inputs)
    calibration: str | None = None
    # aot: the largest batch the package is compiled for (its batch dimension is dynamic,
    # 1..aot_max_batch); fixed when the archive is built (handlers.aot_build)
    aot_max_batch: int = 32
    # torch.compile keyword arguments, from model-config.yaml's `pt2:` section
    # (handlers.pt2_section), not from `handler:`
    compile_options: Mapping[str, object] = field(
        default_factory=lambda: MappingProxyType({}))


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """`; did you mean X?` for a near miss of one of `choices`, else ''."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _check_choice(key: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"handler.{key}: {value!r} is not one of {', '.join(choices)}"
                         + did_you_mean(value, choices))
    return str(value)


def _check_int(key: str, value: object, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"handler.{key}: expected an integer >= {minimum}, got {value!r}")
    return value


def _check_bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"handler.{key}: expected true or false, got {value!r}")
    return value


def _check_channels(key: str, value: object) -> tuple[float, float, float]:
    """Three numbers, R, G, B; a std must be >= 1 since it is on 0..255 pixel values."""
    if not (isinstance(value, list) and len(value) == 3 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"handler.{key}: expected three numbers [R, G, B], got {value!r}")
    if key == "std" and min(value) < 1:
        # Dividing by less than one pixel level is never meant: torchvision's 0..1 values.
        raise ValueError(f"handler.std: {value!r} looks like a 0..1 scale; mean and std are "
                         "on 0..255 pixel values (multiply torchvision's by 255)")
    return (float(value[0]), float(value[1]), float(value[2]))


@dataclass(frozen=True)
class Vocabulary:
    """The names `handler.task` and `handler.optimize` may take."""

    tasks: tuple[str, ...]
    steps: tuple[str, ...]
    presets: tuple[str, ...]


def _check_optimize(value: object, vocabulary: Vocabulary) -> tuple[str, ...] | str:
    if isinstance(value, str):
        return _check_choice("optimize", value, vocabulary.presets)
    if isinstance(value, list) and all(isinstance(step, str) for step in value):
        unknown = [step for step in value if step not in vocabulary.steps]
        if unknown:
            raise ValueError(
                f"handler.optimize: unknown step(s) {unknown}; steps are "
                f"{', '.join(vocabulary.steps)}" + did_you_mean(unknown[0], vocabulary.steps)
            )
        return tuple(value)
    raise ValueError(
        f"handler.optimize: expected one of {', '.join(vocabulary.presets)} or a list of steps, "
        f"got {value!r}"
    )


def _parse_gate(value: object) -> GateThresholds:
    if not isinstance(value, Mapping):
        raise ValueError(f"handler.accuracy_gate: expected a mapping, got {value!r}")
    known = {f.name: f.type for f in fields(GateThresholds)}
    parsed: dict[str, float | int] = {}
    for key, raw in value.items():
        if key not in known:
            raise ValueError(
                f"handler.accuracy_gate.{key}: unknown key; keys are {', '.join(known)}"
                + did_you_mean(key, known)
            )
        if key == "topk":
            parsed[key] = _check_int(f"accuracy_gate.{key}", raw, 1)
        elif isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise ValueError(f"handler.accuracy_gate.{key}: expected a number, got {raw!r}")
        else:
            parsed[key] = float(raw)
    return GateThresholds(**parsed)  # type: ignore[arg-type]


_INT_KEYS = {
    "example_batch_size": 1,
    "warmup_iterations": 0,
    "topk": 1,
    "image_size": 8,
    "resize_size": 8,
    "max_image_pixels": 1,
    "max_length": 2,
    "aot_max_batch": 1,
}
_BOOL_KEYS = ("itt_ranges", "emit_itt")
_CHANNEL_KEYS = ("mean", "std")
_CHOICE_KEYS = {"dtype": DTYPES, "truncation": TRUNCATION, "response": RESPONSES,
                "input_dtype": INPUT_DTYPES}
#: every key `handler:` takes
HANDLER_KEYS = tuple(sorted([*_INT_KEYS, *_BOOL_KEYS, *_CHANNEL_KEYS, *_CHOICE_KEYS, "task",
                             "optimize", "accuracy_gate", "channels_last", "calibration",
                             "input_shape"]))


def _check_input_shape(value: object) -> tuple[int, ...]:
    if not (isinstance(value, list) and value and all(
            isinstance(side, int) and not isinstance(side, bool) and side > 0
            for side in value)):
        raise ValueError(f"handler.input_shape: expected the shape of one input without the "
                         f"batch dimension, a list of positive integers such as [8], got {value!r}")
    return tuple(value)


def _check_value(key: str, raw: object, vocabulary: Vocabulary) -> tuple[str, object]:
    """(settings field, checked value) of one `handler:` entry; ValueError naming the key."""
    if key == "task":
        return key, _check_choice("task", raw, vocabulary.tasks)
    if key == "optimize":
        return key, _check_optimize(raw, vocabulary)
    if key in _CHOICE_KEYS:
        return key, _check_choice(key, raw, _CHOICE_KEYS[key])
    if key == "accuracy_gate":
        return "gate", GATE_OFF if raw is False else _parse_gate(raw)
    if key in _INT_KEYS:
        return key, _check_int(key, raw, _INT_KEYS[key])
    if key in _BOOL_KEYS:
        return key, _check_bool(key, raw)
    if key in _CHANNEL_KEYS:
        return key, _check_channels(key, raw)
    if key == "input_shape":
        return key, _check_input_shape(raw)
    if key == "calibration":
        if not isinstance(raw, str) or not raw:
            raise ValueError(f"handler.calibration: expected a path in the archive, got {raw!r}")
        return key, raw
    if key == "channels_last":
        return key, None if raw in (None, "auto") else _check_bool(key, raw)
    raise ValueError(f"handler.{key}: unknown key{did_you_mean(key, HANDLER_KEYS)}; keys are "
                     f"{', '.join(HANDLER_KEYS)}")


class SettingsError(ValueError):
    """Every mistake of a `handler:` section, one per line; `problems` lists them."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = tuple(problems)


def parse_handler_section(section: Mapping[str, object] | None,
                          vocabulary: Vocabulary) -> HandlerSettings:
    """Checked settings from model-config.yaml's `handler:` mapping (None: all defaults).

    Every key is checked, so one start-up (or `torchserve-cpu check`) names all mistakes."""
    if section is None:
        return HandlerSettings()
    if not isinstance(section, Mapping):
        raise SettingsError([f"handler: expected a mapping in model-config.yaml, got {section!r}"])
    values: dict[str, object] = {}
    problems = []
    for key, raw in section.items():
        try:
            name, value = _check_value(str(key), raw, vocabulary)
            values[name] = value
        except ValueError as error:
            problems.append(str(error))
    if problems:
        raise SettingsError(problems)
    settings = HandlerSettings(**values)  # type: ignore[arg-type]
    if settings.resize_size < settings.image_size:
        raise SettingsError(["handler.resize_size: must be >= handler.image_size"])
    return settings
