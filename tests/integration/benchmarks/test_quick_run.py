"""The driver's quick mode end to end: real TorchServe, real ab, a tiny model.

Checks that one invocation writes a CSV, a summary and plots that agree with each other.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.results import read_csv

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
SCENARIOS = ["stock", "threads", "torchserve-launcher"]


def tiny_archive(tmp: Path) -> Path:
    """A scripted two-layer CNN behind tiny_handler.py, archived with torch-model-archiver."""
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(8, 10),
    ).eval()
    torch.jit.script(model).save(str(tmp / "tiny.pt"))
    store = tmp / "store"
    store.mkdir()
    subprocess.run(
        [str(Path(sys.executable).parent / "torch-model-archiver"), "--model-name", "tiny",
         "--version", "1.0", "--serialized-file", str(tmp / "tiny.pt"),
         "--handler", str(HERE / "tiny_handler.py"), "--export-path", str(store)],
        check=True,
    )
    return store / "tiny.mar"


@pytest.fixture(scope="module")
def result_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("ab") is None or shutil.which("java") is None:
        pytest.skip("needs apache-bench and java")
    tmp = tmp_path_factory.mktemp("quick")
    archive = tiny_archive(tmp)
    image = tmp / "in.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(image)
    out = tmp / "results"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--quick", "--archive", str(archive),
         "--input", str(image), "--scenarios", *SCENARIOS, "--requests", "24",
         "--raw-seconds", "1", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "[1/3] tiny / stock" in proc.stderr  # progress on the terminal
    return Path(proc.stdout.strip().splitlines()[-1])


def test_csv_has_every_scenario_measured(result_set: Path) -> None:
    rows = read_csv(result_set / "ab_report.csv")
    assert [r["scenario"] for r in rows] == SCENARIOS
    for r in rows:
        assert r["status"] == "ok", r["note"]
        assert r["Benchmark"] == "AB" and r["Requests"] == "24"
        assert float(r["TS throughput"]) > 0 and r["TS failed requests"] == "0"
        assert float(r["TS latency P50"]) <= float(r["TS latency P99"])
        assert float(r["Model_p50"]) > 0  # TorchServe's own timing, from its metric log
        assert float(r["server_cpu_s"]) > 0
        assert float(r["raw_items_per_s"]) > 0 and float(r["peak_gflops"]) > 0
    assert float(rows[0]["ratio_to_stock"]) == 1.0
    assert float(rows[2]["ratio_to_torchserve_launcher"]) == 1.0


def test_summary_agrees_with_csv(result_set: Path) -> None:
    rows = read_csv(result_set / "ab_report.csv")
    summary = (result_set / "summary.md").read_text()
    for r in rows:
        line = next(line for line in summary.splitlines()
                    if line.startswith(f"| tiny | {r['scenario']} |"))
        assert f"| {float(r['items_per_s']):.1f} |" in line
    best = max(rows, key=lambda r: float(r["items_per_s"]))
    assert f"best `{best['scenario']}`" in summary


def test_plots_machine_and_configs(result_set: Path) -> None:
    for name in ("throughput.png", "latency.png"):
        assert (result_set / name).read_bytes()[:4] == b"\x89PNG"
    facts = json.loads((result_set / "machine.json").read_text())
    assert facts["torch"] == torch.__version__ and facts["torchserve"]
    launcher_cfg = (result_set / "configs" / "tiny-torchserve-launcher" / "config.properties")
    assert "cpu_launcher_enable=true" in launcher_cfg.read_text()
    threads_env = json.loads((result_set / "configs" / "tiny-threads" / "env.json").read_text())
    assert threads_env == {"BENCH_TORCH_THREADS": str(max(1, len(os.sched_getaffinity(0)) // 2))}
