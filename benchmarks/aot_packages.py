"""Load time and speed of an archive's AOTInductor packages (fp32, bf16, int8) against the
fp32 default pipeline (TorchScript + oneDNN Graph) and int8 built at worker start,
EfficientNet-Lite0 on this CPU.

    python -m benchmarks.aot_packages [--out benchmarks/results/precision/aot-int8.md]

Archives come from model_store.build (`optimize: aot`, dtype int8 and bf16: packages cached
in ~/.cache/torchserve-cpu/aot). Load: `load_package` in a fresh process, LOADS times,
median. Speed: raw calls, 1 thread, batch 8 of the archive's photos, every variant timed in
interleaved rounds (benchmarks.precision_study.interleaved_rates: the host is shared).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

MODEL = "efficientnet_lite0"
LOADS = 5
BATCH = 8
LOAD_CODE = ("import sys, time; from pathlib import Path; "
             "from torchserve_cpu.handlers.aot_package import load_package; "
             "t = time.perf_counter(); load_package(Path(sys.argv[1])); "
             "print(time.perf_counter() - t)")


def unpacked(dtype: str, work: Path) -> Path:
    """The model store's aot archive for `dtype`, unpacked as TorchServe would."""
    from torchserve_cpu.model_store.build import build_archive

    mar = build_archive(MODEL, work / "store", archive_name=f"{MODEL}_{dtype}",
                        handler_overrides={"optimize": "aot", "dtype": dtype})
    folder = work / dtype
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(folder)
    return folder


def load_seconds(package: Path) -> float:
    runs = [float(subprocess.run([sys.executable, "-c", LOAD_CODE, str(package)], check=True,
                                 capture_output=True, text=True).stdout.split()[-1])
            for _ in range(LOADS)]
    return statistics.median(runs)


def measure(work: Path) -> dict[str, object]:
    import yaml

    from benchmarks.precision_study import build_variant, interleaved_rates
    from torchserve_cpu.handlers.aot_package import PackageRecord, load_package
    from torchserve_cpu.handlers.loading import load_model
    from torchserve_cpu.handlers.optimize.aot_load import AotModule
    from torchserve_cpu.handlers.served_model import build_served_model

    torch.set_num_threads(1)
    folders = {dtype: unpacked(dtype, work) for dtype in ("int8", "bf16")}
    packages = {"fp32": folders["int8"], "int8": folders["int8"], "bf16": folders["bf16"]}
    int8_dir = folders["int8"]
    handler = yaml.safe_load((int8_dir / "model-config.yaml").read_text())["handler"]
    manifest = json.loads((int8_dir / "MAR-INF" / "MANIFEST.json").read_text())
    default = build_served_model(int8_dir, manifest,
                                 {**handler, "optimize": "default", "dtype": "fp32"})
    batch = tuple(x[:BATCH] for x in default.task.collate([
        default.task.decode(f.read_bytes(), None)
        for f in sorted((int8_dir / "calibration").iterdir())[:BATCH]]))
    calls = [(default.model, default.model.stage.onednn_graph)]
    rows: dict[str, dict[str, object]] = {"fp32 default": {
        "pipeline": default.model.plan.describe(), "load_s": None}}
    # int8 as a worker without a package builds it in-process (the int8 step: PT2E +
    # torch.compile), for the package's speed against it in the same run
    (calibration,) = default.task.collate([
        default.task.decode(f.read_bytes(), None)
        for f in sorted((int8_dir / "calibration").iterdir())])
    started = time.perf_counter()
    in_process, notes, graph = build_variant(
        "int8-lowered-8bit", load_model(int8_dir, manifest).eval(), calibration, None)
    calls.append((lambda x: in_process(x), graph))
    rows["int8 built at worker start (torch.compile)"] = {
        "build_s": round(time.perf_counter() - started, 1), "notes": notes}
    for dtype, folder in packages.items():
        package = folder / f"aot-{dtype}.pt2"
        record = PackageRecord.from_json((folder / f"aot-{dtype}.json").read_text())
        if record.refused:
            rows[f"aot {dtype}"] = {"refused": record.refused}
            continue
        calls.append((AotModule(load_package(package), record.max_batch, True), False))
        rows[f"aot {dtype}"] = {"load_s": round(load_seconds(package), 3),
                                "package_mb": round(record.package_bytes / 1e6, 1),
                                "build_s": record.build_seconds,
                                "checked": record.checked}
    rates = interleaved_rates(calls, batch)
    for row, rate in zip([r for r in rows.values() if "refused" not in r], rates):
        row["img_s"] = rate
    base = rates[0]
    for row in rows.values():
        if "img_s" in row:
            row["vs_fp32_default"] = round(row["img_s"] / base, 2)  # type: ignore[operator]
    return rows


def markdown(rows: dict[str, dict[str, object]], cpu: str, flags: str) -> str:
    lines = [f"# AOTInductor packages of {MODEL}: load time and speed", "",
             f"CPU: {cpu}; torch {torch.__version__}; flags used: {flags}.",
             f"Load: `load_package` in a fresh process, median of {LOADS}. Speed: raw calls, "
             f"1 thread, batch {BATCH} of the archive's photos, interleaved rounds "
             "(`python -m benchmarks.aot_packages`).", "",
             "| variant | load s | img/s | vs fp32 default | package MB | build s |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        if "refused" in row:
            lines.append(f"| {name} | refused at build: {row['refused']} | | | | |")
            continue
        lines.append(f"| {name} | {row.get('load_s') or '-'} | {row['img_s']} | "
                     f"{row['vs_fp32_default']} | {row.get('package_mb', '-')} | "
                     f"{row.get('build_s', '-')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from torchserve_cpu.handlers.aot_package import Runtime, isa_flags
    from torchserve_cpu.launcher.host import cpuinfo

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        rows = measure(Path(work))
    text = markdown(rows, cpuinfo().get("model name", "unknown"),
                    " ".join(isa_flags(Runtime.here().cpu_flags)))
    print(text)
    print(json.dumps(rows, indent=1, default=str))
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
