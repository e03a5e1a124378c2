"""`torchserve-cpu check`: what a worker would make of an archive, before deploying it.

A mistake in an archive otherwise shows as TorchServe's `500 Failed to start workers` and
a worker restarted forever, with the reason in model_log.log. Here the archive is read as
TorchServe reads it (a .mar is a zip with MAR-INF/MANIFEST.json) and every problem is
listed at once: each `handler:` key and value (with a did-you-mean), the model-file rule,
the weights (`weights_only`), the task against the model (its example input through the
eager model, the output against the labels file); then, when all is well, the served
model is built once on this machine as a worker would build it. Plain data out: the
command (launcher/cli.py) prints it and turns it into an exit code.
"""

from __future__ import annotations

import json
import pickle
import tempfile
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from torchserve_cpu.handlers.loading import load_state_dict, model_class_from_file
from torchserve_cpu.handlers.model_config import settings_from_sections
from torchserve_cpu.handlers.optimize import error_summary
from torchserve_cpu.handlers.served_model import build_served_model
from torchserve_cpu.handlers.settings import HandlerSettings, SettingsError
from torchserve_cpu.handlers.tasks import describe_example, make_task

MANIFEST = "MAR-INF/MANIFEST.json"


@dataclass(frozen=True)
class CheckReport:
    """Every problem found (empty: a worker would serve it) and what was learned."""

    problems: tuple[str, ...]
    summary: dict[str, object] = field(default_factory=dict)


def check_path(path: Path, config_file: Path | None = None, model_file: str | None = None,
               serialized_file: str | None = None) -> CheckReport:
    """Check a .mar, an unpacked archive, or a model folder (+ `model_file`, ...).

    A missing path or one that is no archive raises (a usage mistake); everything wrong
    inside is a problem in the report."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir():
        return check_folder(path, config_file, model_file, serialized_file)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a model archive (a .mar is a zip file)")
    with tempfile.TemporaryDirectory(prefix="tscpu-check-") as unpacked:
        with zipfile.ZipFile(path) as archive:
            archive.extractall(unpacked)
        return check_folder(Path(unpacked), config_file, model_file, serialized_file)


def read_manifest(folder: Path, model_file: str | None,
                  serialized_file: str | None) -> dict[str, object]:
    """The archive's manifest, or one made of the given files for a plain model folder."""
    path = folder / MANIFEST
    if path.exists():
        manifest = json.loads(path.read_text())
        model = dict(manifest.get("model", {}))
        model.update({key: value for key, value in (("modelFile", model_file),
                                                    ("serializedFile", serialized_file))
                      if value})
        return {**manifest, "model": model}
    if not (model_file or serialized_file):
        raise ValueError(f"{folder}: no {MANIFEST}; for a model folder give --model-file "
                         "and --serialized-file (and --config-file)")
    return {"model": {"modelFile": model_file, "serializedFile": serialized_file}}


def read_config(folder: Path, manifest: Mapping[str, object],
                config_file: Path | None) -> tuple[dict[str, object], str | None, list[str]]:
    """model-config.yaml as a mapping, where it came from, and what is wrong with it."""
    name = (manifest.get("model") or {}).get("configFile")  # type: ignore[union-attr]
    path = config_file or (folder / str(name) if name else None)
    if path is None:
        return {}, None, []
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        return {}, str(path.name), [f"{path.name}: cannot be read as YAML: {error}"]
    if not isinstance(config, dict):
        return {}, str(path.name), [f"{path.name}: expected a mapping, got {config!r}"]
    return config, str(path.name), []


def handler_problems(folder: Path, handler: object) -> list[str]:
    """An archive whose handler is not this package's serves what that handler does: what
    is checked here would not be what runs."""
    if not handler:
        return []
    path = folder / str(handler)
    if path.is_file() and "torchserve_cpu" in path.read_text(errors="replace"):
        return []
    return [f"handler {handler} is not torchserve-cpu's handler, so this check does not say "
            "what it serves; archive with --handler $(torchserve-cpu handler-path)"]


def check_settings(config: Mapping[str, object]) -> tuple[HandlerSettings | None, list[str]]:
    try:
        return settings_from_sections(config.get("handler"), config.get("pt2")), []  # type: ignore[arg-type]
    except SettingsError as error:
        return None, list(error.problems)
    except ValueError as error:
        return None, [str(error)]


def load_eager(folder: Path, manifest: Mapping[str, object],
               summary: dict[str, object]) -> tuple[torch.nn.Module | None, list[str]]:
    """The eager model as a worker loads it, one problem per step that fails."""
    model_info: Mapping[str, object] = manifest.get("model") or {}  # type: ignore[assignment]
    model_file, serialized = model_info.get("modelFile"), model_info.get("serializedFile")
    if not model_file:
        if not serialized:
            return None, ["the archive has neither a model file nor a serialized file"]
        try:
            return torch.jit.load(str(folder / str(serialized)), map_location="cpu").eval(), []
        except Exception as error:  # noqa: BLE001 - any failure is the archive's
            return None, [f"{serialized}: not a TorchScript file and no model file to load "
                          f"it into: {error_summary(error)}"]
    try:
        cls = model_class_from_file(folder / str(model_file))
        model = cls()
    except ValueError as error:
        return None, [str(error)]
    except Exception as error:  # noqa: BLE001 - the user's file raised while importing
        return None, [f"model file {model_file}: {error_summary(error)}"]
    summary["model_class"] = cls.__name__
    if serialized:
        try:
            state = load_state_dict(folder / str(serialized))
        except pickle.UnpicklingError as error:
            # torch's message opens with advice to turn weights_only off; the reason is inside
            lines = [line for line in str(error).splitlines() if line.strip()]
            reason = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line),
                          lines[-1] if lines else "")
            return None, [f"{serialized}: torch.load(weights_only=True) refuses it (a pickle "
                          f"that would run code, or objects other than tensors): {reason}; "
                          "save the model's state_dict()"]
        except Exception as error:  # noqa: BLE001 - a damaged file, not a state dict, ...
            return None, [f"{serialized}: {error_summary(error)}"]
        try:
            model.load_state_dict(state)
        except Exception as error:  # noqa: BLE001 - keys or shapes do not fit the class
            return None, [f"{serialized} does not fit {cls.__name__}: {error_summary(error)}"]
    return model.eval(), []


def check_task(folder: Path, settings: HandlerSettings, model: torch.nn.Module,
               summary: dict[str, object]) -> list[str]:
    """The task's example input through the eager model; its output against the labels."""
    try:
        task = make_task(settings, folder)
    except (ValueError, ImportError) as error:
        return [str(error)]
    example = task.example_inputs(settings.example_batch_size)
    summary["example_input"] = " + ".join(shape_text(x) for x in example)
    try:
        with torch.no_grad():
            output = model(*example)
    except Exception as error:  # noqa: BLE001 - the user's forward on the task's input
        return [f"the model does not run on the example input: {error_summary(error)}; "
                f"{describe_example(settings, example)}"]
    if not isinstance(output, torch.Tensor):
        return [f"the model returns {type(output).__name__}, not a tensor"]
    summary["example_output"] = shape_text(output)
    return task.output_problems(output)


def shape_text(tensor: torch.Tensor) -> str:
    return "x".join(map(str, tensor.shape)) + f" {str(tensor.dtype).removeprefix('torch.')}"


def check_folder(folder: Path, config_file: Path | None = None,
                 model_file: str | None = None,
                 serialized_file: str | None = None) -> CheckReport:
    """Every problem of an unpacked archive; the served model built when there are none."""
    manifest = read_manifest(folder, model_file, serialized_file)
    summary: dict[str, object] = {"handler": (manifest.get("model") or {}).get("handler")}
    config, config_name, problems = read_config(folder, manifest, config_file)
    problems = handler_problems(folder, summary["handler"]) + problems
    summary["config"] = config_name
    settings, settings_problems = check_settings(config)
    problems += settings_problems
    model, load_problems = load_eager(folder, manifest, summary)
    problems += load_problems
    if settings is not None:
        summary["task"] = settings.task
        if model is not None:
            problems += check_task(folder, settings, model, summary)
    if problems:
        return CheckReport(tuple(problems), summary)
    started = time.perf_counter()
    try:
        served = build_served_model(folder, manifest, config.get("handler"),  # type: ignore[arg-type]
                                    pt2_section=config.get("pt2"))
    except Exception as error:  # noqa: BLE001 - whatever stops a worker stops the check
        return CheckReport((f"building the served model failed: {error_summary(error)}",),
                           summary)
    chosen = served.model
    load_s = round(time.perf_counter() - started, 2)
    summary.update(
        pipeline=chosen.plan.describe(), dtype=chosen.dtype, ipex=served.ipex.reason,
        gate={"cosine": round(chosen.agreement.cosine, 6),
              "max_abs_diff": float(f"{chosen.agreement.max_abs_diff:.3g}"),
              "topk_agreement": round(chosen.agreement.topk_agreement, 4)},
        rejected=list(chosen.rejected), notes=list(chosen.stage.notes),
        load_s=load_s,
    )
    return CheckReport((*served.warnings, *startup_problems(config, load_s)), summary)


#: TorchServe's default for a worker's load (config.properties `default_startup_timeout`)
STARTUP_TIMEOUT_S = 120


def startup_problems(config: Mapping[str, object], load_s: float) -> list[str]:
    """A load slower than TorchServe allows: it kills the worker and retries (a first int8
    build on a busy core: 97-120 s)."""
    timeout = config.get("startupTimeout")
    limit = timeout if isinstance(timeout, int) and not isinstance(timeout, bool) \
        else STARTUP_TIMEOUT_S
    if load_s <= limit:
        return []
    where = "model-config.yaml startupTimeout" if limit == timeout else \
        "TorchServe's default startupTimeout (unless config.properties sets " \
        "default_startup_timeout)"
    return [f"loading took {load_s:.0f} s here, longer than the {limit} s of {where}: "
            "TorchServe kills the worker and starts another; raise startupTimeout in "
            "model-config.yaml, or build the packages ahead with `torchserve-cpu aot build`"]


def render(report: CheckReport, name: str) -> str:
    """The report for people: what a worker would serve, then every problem."""
    lines = [f"{name}:"]
    for key, value in report.summary.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, list):
            value = "; ".join(map(str, value))
        if value not in (None, ""):
            lines.append(f"  {key}: {value}")
    if report.problems:
        lines.append(f"{len(report.problems)} problem(s):")
        lines += [f"  - {problem}" for problem in report.problems]
    else:
        lines.append("ok: a worker would serve this")
    return "\n".join(lines)
