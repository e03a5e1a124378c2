"""`python -m benchmarks.precision_study`: how each precision of EfficientNet-Lite0 agrees with
fp32 eager on the photo set, how fast it runs and how long it takes to build.

    python -m benchmarks.precision_study [--out benchmarks/results/precision] [--no-avx2]
                                         [--no-minilm] [--variants NAME ...]

Variants (the model a worker would build, through handlers.optimize's own steps):
- fp32-default: the `default` preset (TorchScript trace + freeze, oneDNN Graph): our fp32
  default, the base of the speed ratios
- fp32-compiled: the `compile` preset (Inductor, freezing)
- bf16-autocast: eager under CPU bf16 autocast
- int8-reference-{8,7}bit: the PT2E q/dq model (handlers.quantize.quantize_pt2e), unlowered:
  what the quantization itself costs in accuracy
- int8-lowered-{8,7}bit: the `int8` step (quantize_conv_net + torch.compile) on this CPU's
  own kernels
- int8-lowered-{8,7}bit-avx2 (and fp32-*-avx2): the same in a child process with oneDNN
  held to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2) and Inductor's code to AVX2
  (ATEN_CPU_CAPABILITY=avx2): the kernels an AVX2-only CPU runs, where u8 x s8 pairs are
  summed in a saturating int16 (vpmaddubsw). This reproduces on a VNNI host what a Zen 3
  measured; the speed of capped kernels on this CPU is only a proxy for an AVX2 CPU's.

Inputs: the 304 evaluation photos (model_store/photos.py EVAL_GRID) through the archive's
own task (224 crops, (p - 127) / 128); calibration on the 76 photos an int8 archive carries
(write_calibration_images, decoded as requests are). Figures per variant: top-1 agreement
with fp32 eager over all photos and over those where fp32 is confident (top-1 minus top-2
probability >= 0.1), fp32's top-1 within the variant's top-5, worst and mean cosine of the
logits, and the gate's verdict (handlers.accuracy.CLASSIFIER_GATE) on the 304 photos and
on the 76 the worker checks. Speed: 1 thread, batch 8, raw model calls (no server).
Also MiniLM (real weights): fp32 default vs the `int8` step (torchao dynamic) on the 50
sample sentences, embedding cosine and seq/s. Writes precision.json and precision.md to
--out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "precision"
MODEL = "efficientnet_lite0"
BATCH = 8
SPEED_BATCHES = 6  # timed calls per variant and round: 48 images
ROUNDS = 5
NATIVE = ("fp32-default", "fp32-compiled", "bf16-autocast", "int8-reference-8bit",
          "int8-reference-7bit", "int8-lowered-8bit", "int8-lowered-7bit")
#: no fp32-compiled-avx2: under the caps Inductor's fp32 convs came out wrong (cosine -0.14
#: to fp32 eager, measured), an artifact of capping this CPU, not an AVX2 CPU's behaviour
AVX2 = ("fp32-default-avx2", "int8-lowered-8bit-avx2", "int8-lowered-7bit-avx2")
AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


@dataclass(frozen=True)
class Row:
    variant: str
    isa: str  # "native" or "avx2" (capped)
    build_s: float
    img_per_s: float
    top1_all: float
    top1_confident: float
    confident: int
    top1_in_top5: float
    cosine_min: float
    cosine_mean: float
    gate_eval: str  # the classifier gate on the 304 photos: pass / the failures
    gate_check: str  # on the 76 archive photos (what a worker checks)
    notes: str = ""


def load_inputs(work: Path) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, object]:
    """(eager model, 304 evaluation inputs, 76 calibration inputs, settings)."""
    import yaml

    from torchserve_cpu.handlers.model_config import parse_settings
    from torchserve_cpu.handlers.tasks import make_task
    from torchserve_cpu.model_store.build import STORE_DIR, efficientnet_lite0_weights
    from torchserve_cpu.model_store.efficientnet_lite0.model import EfficientNetLite0Classifier
    from torchserve_cpu.model_store.photos import (
        EVAL_GRID,
        photo_set,
        write_calibration_images,
    )

    config = yaml.safe_load((STORE_DIR / MODEL / "model-config.yaml").read_text())["handler"]
    settings = parse_settings(config)
    task = make_task(settings, work)
    model = EfficientNetLite0Classifier()
    model.load_state_dict(efficientnet_lite0_weights())
    folder = write_calibration_images(work / "calibration")
    (calibration,) = task.collate([task.decode(f.read_bytes(), None)
                                   for f in sorted(folder.iterdir())])
    _, pixels = photo_set(EVAL_GRID, settings.image_size)
    (evaluation,) = task.collate(list(pixels))
    return model.eval(), evaluation, calibration, settings


def outputs(call: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([call(inputs[i:i + BATCH]).float()
                          for i in range(0, len(inputs), BATCH)])


def interleaved_rates(calls: Sequence[tuple[Callable[..., torch.Tensor], bool]],
                      batch: tuple[torch.Tensor, ...]) -> list[float]:
    """Items per second of each call on `batch`: ROUNDS rounds, each timing every call
    for SPEED_BATCHES batches in turn, median per call. The host is shared: interleaving puts
    the same load on every variant (timed one after the other, load going from 9 to 4 made a
    later fp32 graph 5x faster than the same graph earlier). The bool: the call's graphs
    need oneDNN Graph fusion on (the process-wide TorchScript switch)."""
    from torchserve_cpu.handlers.optimize.steps import set_onednn_graph

    rows = batch[0].shape[0]
    rates: list[list[float]] = [[] for _ in calls]
    with torch.no_grad():
        for _ in range(ROUNDS):
            for index, (call, onednn_graph) in enumerate(calls):
                set_onednn_graph(onednn_graph)
                call(*batch)
                start = time.perf_counter()
                for _ in range(SPEED_BATCHES):
                    call(*batch)
                rates[index].append(SPEED_BATCHES * rows / (time.perf_counter() - start))
    return [round(statistics.median(r), 1) for r in rates]


def figures(reference: torch.Tensor, out: torch.Tensor) -> dict[str, float | int]:
    from torchserve_cpu.handlers.optimize.accuracy import CLASSIFIER_GATE, compare

    agreement = compare(reference, out, CLASSIFIER_GATE)
    return {"top1_all": float((out.argmax(1) == reference.argmax(1)).float().mean()),
            "top1_confident": agreement.confident_agreement,
            "confident": agreement.confident_inputs,
            "top1_in_top5": agreement.top1_in_top5,
            "cosine_min": agreement.cosine, "cosine_mean": agreement.mean_cosine}


def gate(reference: torch.Tensor, out: torch.Tensor) -> str:
    from torchserve_cpu.handlers.optimize.accuracy import CLASSIFIER_GATE, compare

    agreement = compare(reference, out, CLASSIFIER_GATE)
    return "pass" if agreement.passed else "fail: " + "; ".join(agreement.failures)


def build_variant(name: str, model: torch.nn.Module, calibration: torch.Tensor,
                  settings: object
                  ) -> tuple[Callable[[torch.Tensor], torch.Tensor], str, bool]:
    """(a function from a batch to logits, notes, whether it needs oneDNN Graph fusion on)
    for the variant `name`."""
    from torchserve_cpu.handlers.optimize.accuracy import CLASSIFIER_GATE
    from torchserve_cpu.handlers.optimize.ipex_support import IpexStatus
    from torchserve_cpu.handlers.optimize.pipeline import (
        INT8_PLAN,
        PRESET_STEPS,
        StepPlan,
        run_steps,
    )
    from torchserve_cpu.handlers.optimize.quantize import quantize_pt2e
    from torchserve_cpu.handlers.optimize.steps import (
        StepContext,
        call_stage,
        prepare_inputs,
        set_onednn_graph,
    )

    base = name.removesuffix("-avx2")
    bits = 8 if "8bit" in base else 7
    ctx = StepContext(example=(calibration[:1],), ipex=IpexStatus(None, "not used"),
                      channels_last=None, calibration=(calibration,), gate=CLASSIFIER_GATE,
                      activation_bits=bits)
    if base == "bf16-autocast":
        def bf16(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(x)
        return bf16, "", False
    if base.startswith("int8-reference"):
        quantized, rows = quantize_pt2e(model, (calibration,), bits)
        return (lambda x: quantized(*prepare_inputs((x,), True))), f"calibrated on {rows}", False
    if base.startswith("fp32-"):
        preset = "default" if base == "fp32-default" else "compile"
        plan = StepPlan(preset, PRESET_STEPS[preset])
    else:
        plan = INT8_PLAN
    set_onednn_graph(False)
    stage = run_steps(model, plan, ctx)
    set_onednn_graph(stage.onednn_graph)

    def call(x: torch.Tensor) -> torch.Tensor:
        return call_stage(stage, (x,))

    for _ in range(3):  # TorchScript's profiling runs and Inductor's compile happen here
        call(calibration[:BATCH])
    return call, "; ".join(stage.notes), stage.onednn_graph


def measure(variants: Sequence[str], isa: str) -> list[Row]:
    from torchserve_cpu.handlers.optimize.steps import set_onednn_graph

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as work:
        model, evaluation, calibration, settings = load_inputs(Path(work))
    with torch.no_grad():
        reference = outputs(model, evaluation)
        check_reference = outputs(model, calibration)
    rows, calls = [], []
    for name in variants:
        print(f"precision_study: {name} ({isa})", file=sys.stderr, flush=True)
        start = time.perf_counter()
        call, notes, onednn_graph = build_variant(name, model, calibration, settings)
        build_s = time.perf_counter() - start
        set_onednn_graph(onednn_graph)
        out = outputs(call, evaluation)
        rows.append(Row(name, isa, round(build_s, 1), 0.0, **figures(reference, out),
                        gate_eval=gate(reference, out),
                        gate_check=gate(check_reference, outputs(call, calibration)),
                        notes=notes))
        calls.append((call, onednn_graph))
    rows.append(Row("fp32-eager", isa, 0.0, 0.0, 1.0, 1.0,
                    figures(reference, reference)["confident"], 1.0, 1.0, 1.0, "pass", "pass"))
    calls.append((model, False))
    print(f"precision_study: timing {len(calls)} variants, interleaved", file=sys.stderr)
    rates = interleaved_rates(calls, (evaluation[:BATCH],))
    return [replace(row, img_per_s=rate) for row, rate in zip(rows, rates)]


@dataclass(frozen=True)
class TextRow:
    variant: str
    build_s: float
    seq_per_s: float
    cosine_min: float
    cosine_mean: float
    gate: str  # the embedding gate (cosine >= 0.99, handlers.settings defaults)
    notes: str = ""


def minilm_rows() -> list[TextRow]:
    """MiniLM (real weights) fp32 default vs int8 (torchao dynamic, the `int8` step) on the 50
    sample sentences: embedding cosine, and sequences/s at 1 thread, batch 8 (128 tokens)."""
    import shutil
    import tempfile

    from torchserve_cpu.handlers.model_config import parse_settings
    from torchserve_cpu.handlers.optimize.accuracy import compare
    from torchserve_cpu.handlers.optimize.ipex_support import IpexStatus
    from torchserve_cpu.handlers.optimize.optimizer import thresholds_for
    from torchserve_cpu.handlers.optimize.pipeline import (
        INT8_PLAN,
        PRESET_STEPS,
        StepPlan,
        run_steps,
    )
    from torchserve_cpu.handlers.optimize.steps import StepContext, call_stage, set_onednn_graph
    from torchserve_cpu.handlers.tasks import make_task
    from torchserve_cpu.model_store.architectures.bert import SentenceEmbedder
    from torchserve_cpu.model_store.build import minilm_weights, tokenizer_files
    from torchserve_cpu.model_store.photos import sentences

    settings = parse_settings({"task": "text_embedding", "dtype": "int8"})
    with tempfile.TemporaryDirectory() as work:
        for file in tokenizer_files():
            shutil.copy(file, work)
        task = make_task(settings, Path(work))
    model = SentenceEmbedder()
    model.load_state_dict(minilm_weights())
    model.eval()
    texts = [task.decode(text.encode(), "text/plain") for text in sentences()]
    batches = [task.collate(texts[i:i + BATCH]) for i in range(0, len(texts), BATCH)]
    with torch.no_grad():
        reference = torch.cat([model(*batch) for batch in batches])
    ctx = StepContext(example=batches[0], ipex=IpexStatus(None, "not used"), channels_last=None)
    rows, calls = [], []
    for plan in (StepPlan("default", PRESET_STEPS["default"]), INT8_PLAN):
        print(f"precision_study: minilm {plan.describe()}", file=sys.stderr, flush=True)
        set_onednn_graph(False)
        start = time.perf_counter()
        stage = run_steps(model, plan, ctx)
        set_onednn_graph(stage.onednn_graph)
        for _ in range(3):
            call_stage(stage, batches[0])
        build_s = time.perf_counter() - start
        out = torch.cat([call_stage(stage, batch) for batch in batches])
        agreement = compare(reference, out, thresholds_for(plan, settings, classifies=False))
        rows.append(TextRow(plan.describe(), round(build_s, 1), 0.0, agreement.cosine,
                            agreement.mean_cosine,
                            "pass" if agreement.passed else "; ".join(agreement.failures),
                            "; ".join(stage.notes)))
        calls.append((lambda *inputs, stage=stage: call_stage(stage, inputs),
                      stage.onednn_graph))
    rates = interleaved_rates(calls, batches[0])
    set_onednn_graph(False)
    return [replace(row, seq_per_s=rate) for row, rate in zip(rows, rates)]


def machine() -> dict[str, object]:
    from benchmarks.machine import machine_facts

    facts = machine_facts()
    facts["torch_cpu_capabilities"] = torch.cpu.get_capabilities()
    facts["vnni"] = torch.cpu._is_vnni_supported()
    try:
        import importlib.metadata

        facts["torchao"] = importlib.metadata.version("torchao")
    except importlib.metadata.PackageNotFoundError:
        facts["torchao"] = None
    return facts


def child_rows(variants: Sequence[str]) -> list[Row]:
    """The variants measured in a child process with the AVX2 caps in its environment (oneDNN
    reads ONEDNN_MAX_CPU_ISA once, at its first call)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.json"
        subprocess.run([sys.executable, "-m", "benchmarks.precision_study", "--child",
                        str(path), "--variants", *variants],
                       env={**os.environ, **AVX2_ENV}, check=True)
        return [Row(**row) for row in json.loads(path.read_text())]


def pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def markdown(rows: Sequence[Row], facts: dict[str, object],
             text_rows: Sequence[TextRow] = ()) -> str:
    base = {r.isa: r.img_per_s for r in rows if r.variant.removesuffix("-avx2") == "fp32-default"}
    lines = [
        "# Precision study: EfficientNet-Lite0 on the photo set",
        "",
        f"CPU: {facts['cpu_model']}; flags: {', '.join(facts['flags'])}; "
        f"torch.cpu.get_capabilities(): {facts['torch_cpu_capabilities']}; "
        f"torch {facts['torch']}, torchao {facts['torchao']}; load at start "
        f"{facts['load_average_at_start']}.",
        "",
        "304 evaluation photos vs fp32 eager; confident = fp32 top-1 minus top-2 probability "
        ">= 0.1. Speed: 1 thread, batch 8, raw calls; x = vs fp32-default at the same ISA. "
        "Gate: handlers.accuracy.CLASSIFIER_GATE on the 304 photos / on the 76 archive photos.",
        "",
        "| variant | ISA | top-1 all | top-1 confident (n) | fp32 top-1 in top-5 "
        "| cosine min / mean | img/s | x | build s | gate 304 | gate 76 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        ratio = r.img_per_s / base[r.isa] if base.get(r.isa) else float("nan")
        lines.append(f"| {r.variant} | {r.isa} | {pct(r.top1_all)} | {pct(r.top1_confident)} "
                     f"({r.confident}) | {pct(r.top1_in_top5)} | {r.cosine_min:.3f} / "
                     f"{r.cosine_mean:.4f} | {r.img_per_s:.1f} | {ratio:.2f} | {r.build_s:.1f} "
                     f"| {r.gate_eval} | {r.gate_check} |")
    notes = [f"- {r.variant} ({r.isa}): {r.notes}" for r in rows if r.notes]
    text = ["", "MiniLM (real weights), 50 sentences, embedding cosine vs fp32 eager; 1 thread, "
            "batch 8, 128 tokens:", "",
            "| variant | cosine min / mean | seq/s | x | build s | gate (cosine >= 0.99) |",
            "|---|---:|---:|---:|---:|---|"]
    for r in text_rows:
        ratio = r.seq_per_s / text_rows[0].seq_per_s
        text.append(f"| {r.variant} | {r.cosine_min:.4f} / {r.cosine_mean:.4f} | "
                    f"{r.seq_per_s:.1f} | {ratio:.2f} | {r.build_s:.1f} | {r.gate} |")
    notes += [f"- MiniLM {r.variant}: {r.notes}" for r in text_rows if r.notes]
    return "\n".join(lines + (text if text_rows else []) + ["", "Build notes:", "", *notes, ""])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--variants", nargs="*", default=None)
    parser.add_argument("--no-avx2", action="store_true", help="skip the AVX2-capped child")
    parser.add_argument("--no-minilm", action="store_true", help="skip MiniLM's int8 check")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        rows = measure(args.variants, "avx2")
        args.child.write_text(json.dumps([asdict(r) for r in rows]))
        return 0
    chosen = NATIVE + AVX2 if args.variants is None else args.variants
    native = [v for v in chosen if not v.endswith("-avx2")]
    capped = [v.removesuffix("-avx2") for v in chosen if v.endswith("-avx2")]
    facts = machine()
    rows = measure(native, "native") if native else []
    if capped and not args.no_avx2:
        rows += [Row(**{**asdict(r), "variant": r.variant + "-avx2"})
                 for r in child_rows(capped)]
    text_rows = [] if args.no_minilm else minilm_rows()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "precision.json").write_text(json.dumps(
        {"machine": facts, "rows": [asdict(r) for r in rows],
         "minilm": [asdict(r) for r in text_rows]}, indent=1, default=str))
    report = markdown(rows, facts, text_rows)
    (args.out / "precision.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
