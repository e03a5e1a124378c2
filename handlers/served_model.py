"""Build the model a worker serves from an unpacked archive, in one place.

settings -> task -> example inputs -> IPEX probe -> optimize, which loads the eager
model when a candidate needs it (an aot package does not). The handler, the
stock baseline (benchmarks/stock_handler.py) and the benchmarks' raw loop
(benchmarks/reference.py) all build through `build_served_model`, so a served/raw ratio
compares the very same model and the baseline differs only by the options it passes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from torchserve_cpu.handlers.aot_package import record_name
from torchserve_cpu.handlers.archive import host_int8_package
from torchserve_cpu.handlers.loading import load_model
from torchserve_cpu.handlers.model_config import settings_from_sections
from torchserve_cpu.handlers.optimize import (
    Decision,
    ExampleInputError,
    IpexStatus,
    Optimized,
    check_inputs,
    decide,
    optimize,
    probe_ipex,
)
from torchserve_cpu.handlers.settings import HandlerSettings
from torchserve_cpu.handlers.tasks import ModelInputs, Task, describe_example, make_task
from torchserve_cpu.launcher.host import CpuFacts, this_cpu

log = logging.getLogger(__name__)

#: The eager baseline never imports IPEX: importing it changes TorchScript in the process.
NOT_PROBED = IpexStatus(None, "not probed (eager model as loaded)")


@dataclass(frozen=True)
class ServedModel:
    """The checked settings, the task and the model as built, with how it was built."""

    settings: HandlerSettings
    task: Task
    model: Optimized
    ipex: IpexStatus
    example: ModelInputs  # the inputs the model was built and checked on
    precision: Decision  # what this CPU runs of the requested dtype, and why
    cpu: CpuFacts  # the facts that decision read
    warnings: tuple[str, ...] = ()  # what the task found wrong with the archive (labels)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(*inputs)


def build_served_model(
    model_dir: Path,
    manifest: Mapping[str, object],
    handler_section: Mapping[str, object] | None,
    *,
    optimized: bool = True,
    ipex: IpexStatus | None = None,
    pt2_section: object = None,
    cpu: CpuFacts | None = None,
) -> ServedModel:
    """The model an archive's worker serves.

    `handler_section` is model-config.yaml's `handler:` mapping, `pt2_section` its `pt2:`
    (handlers.pt2_section: mapped onto the settings or refused). `optimized=False` keeps
    the eager fp32 model as loaded, whatever the section asks (the stock baseline), and
    skips the IPEX probe. `ipex` replaces the probe (tests, IPEX-vs-native comparisons).
    `cpu` replaces this machine's CPU facts (tests of other CPUs).
    """
    settings = settings_from_sections(handler_section, pt2_section)
    if not optimized:
        settings = replace(settings, optimize="eager", dtype="fp32")
    task = make_task(settings, model_dir)
    example = task.example_inputs(settings.example_batch_size)
    if ipex is None:
        ipex = probe_ipex() if optimized else NOT_PROBED
    check = check_inputs(settings, task, model_dir, example) if optimized else None
    cpu = cpu or this_cpu()
    decision = decide(settings.dtype, cpu)  # microseconds: nothing is built for a refusal
    if decision.served.dtype != settings.dtype and settings.dtype != "auto":
        log.warning("precision: %s", decision.served.reason)
    int8_packages = None
    if optimized and any(c.dtype == "int8" for c in decision.candidates) and \
            not (model_dir / record_name("int8")).exists():
        int8_packages = host_int8(model_dir, manifest, handler_section or {}, settings)
    try:
        model = optimize(lambda: load_model(model_dir, dict(manifest)), example, settings,
                         ipex, task.classifies, model_dir, check=check, decision=decision,
                         int8_packages=int8_packages)
    except ExampleInputError as error:
        raise ExampleInputError(f"{error}; {describe_example(settings, example)}") from None
    warnings: list[str] = []
    if task.classifies:  # one call: the classes the model really has
        with torch.no_grad():
            warnings = task.output_problems(model(*example))
    for warning in warnings:
        log.warning("%s", warning)
    return ServedModel(settings, task, model, ipex, example, decision, cpu, tuple(warnings))


def host_int8(model_dir: Path, manifest: Mapping[str, object],
              handler_section: Mapping[str, object], settings: HandlerSettings) -> Path | None:
    """This host's int8 package of an archive that carries none (built by the first worker,
    loaded by the rest: handlers.archive.host_cache), or None to quantize in-process."""
    found = host_int8_package(model_dir, manifest, handler_section, settings)
    if found.outcome == "failed":
        log.warning("int8 host cache: no package (%s): quantizing in this worker",
                    found.detail)
    else:
        log.info("int8 host cache %s: %s", found.outcome, found.detail)
    return found.folder
