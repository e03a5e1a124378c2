"""An int8 archive served by real TorchServe: a small conv net archived with `dtype: int8` and
a `calibration/` folder of images, without an int8 package. The first worker calibrates on
them and builds this host's int8 package (handlers.archive.host_cache) into a fresh cache,
checked against fp32 eager on them; it serves int8 (its served-model record says so) and
answers like eager; a second worker loads that package instead of quantizing again."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import loopback_torchserve as server
from benchmarks.loopback_torchserve import http_json, post
from torchserve_cpu.handlers.loading import model_class_from_file
from torchserve_cpu.handlers.model_config import parse_settings
from torchserve_cpu.handlers.served_record import read_records
from torchserve_cpu.handlers.tasks import make_task
from torchserve_cpu.launcher.resources import HANDLER_FILE

REPO = Path(__file__).resolve().parents[2]

MODEL = '''
import torch
from torch import nn


class SmallConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(32, 6)

    def forward(self, x):
        return self.fc(self.features(x))
'''
HANDLER = {"task": "image_classification", "dtype": "int8", "topk": 3, "image_size": 32,
           "resize_size": 36, "calibration": "calibration", "response": "detailed"}


def picture(index: int) -> bytes:
    """A 48x48 PNG with a coloured blob on a gradient: structure, not noise."""
    rng = np.random.default_rng(index)
    ys, xs = np.mgrid[0:48, 0:48] / 47.0
    cx, cy = rng.uniform(0.2, 0.8, 2)
    blob = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / 0.05)[..., None]
    pixels = 60 + 120 * blob * rng.uniform(0.3, 1, 3) + 60 * xs[..., None]
    out = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(out, "PNG")
    return out.getvalue()


def build(work: Path, store: Path, top_lines: tuple[str, ...] = (),
          handler: dict[str, object] | None = None) -> Path:
    (work / "model.py").write_text(MODEL)
    lines = ["minWorkers: 1", "maxWorkers: 2", *top_lines, "handler:"]
    lines += [f"  {key}: {value}" for key, value in (handler or HANDLER).items()]
    (work / "model-config.yaml").write_text("\n".join(lines) + "\n")
    calibration = work / "inputs" / "calibration"
    calibration.mkdir(parents=True)
    for index in range(16):
        (calibration / f"{index:02d}.png").write_bytes(picture(index))
    torch.manual_seed(0)
    torch.save(model_class_from_file(work / "model.py")().state_dict(), work / "small.pt")
    store.mkdir()
    subprocess.run([str(Path(sys.executable).parent / "torch-model-archiver"),
                    "--model-name", "small", "--version", "1.0", "--model-file", "model.py",
                    "--serialized-file", "small.pt", "--handler", str(HANDLER_FILE),
                    "--config-file", "model-config.yaml", "--extra-files", str(work / "inputs"),
                    "--export-path", str(store), "--force"], cwd=work, check=True, timeout=300)
    return store / "small.mar"


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[server.TorchServe]:
    work = tmp_path_factory.mktemp("int8")
    build(work, work / "store")
    env = {"TSCPU_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))}  # a first start: a miss
    with server.start(REPO / "config" / "config.properties", work / "store", ["small.mar"],
                      env=env, run_dir=tmp_path_factory.mktemp("ts")) as ts:  # stops it on exit
        ts.wait_ready(["small"], timeout=300)
        yield ts


def test_worker_serves_int8_calibrated_on_the_archive_inputs(serving: server.TorchServe) -> None:
    log = (serving.log_dir / "model_log.log").read_text(errors="replace")
    [record] = [r for r in read_records(log) if r.model == "small"]
    assert record.dtype == "int8" and record.pipeline == "aot[aot] int8", record
    assert any("aot-int8.pt2 loaded" in note for note in record.notes), record.notes
    assert "calibration and accuracy check on 16 inputs from calibration" in log
    assert "int8 host cache miss: built " in log


def test_int8_answers_agree_with_eager(serving: server.TorchServe, tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(MODEL)
    torch.manual_seed(0)
    eager = model_class_from_file(tmp_path / "model.py")().eval()
    task = make_task(parse_settings({k: v for k, v in HANDLER.items() if k != "calibration"}),
                     tmp_path)
    for index in (100, 101, 102):
        body = picture(index)
        reply = post(f"{serving.inference_url}/predictions/small", body, "image/png")
        assert reply.status == 200, reply.body
        with torch.no_grad():
            expected = eager(*task.collate([task.decode(body, "image/png")]))[0].argmax()
        assert reply.json()["topk"][0]["index"] == int(expected)


def test_a_second_worker_loads_the_hosts_package(serving: server.TorchServe) -> None:
    http_json(f"{serving.management_url}/models/small?min_worker=2&synchronous=true", "PUT",
              timeout=300)
    log = (serving.log_dir / "model_log.log").read_text(errors="replace")
    records = [r for r in read_records(log) if r.model == "small"]
    assert len(records) == 2 and {r.pipeline for r in records} == {"aot[aot] int8"}
    assert log.count("int8 host cache miss") == 1 and log.count("int8 host cache hit") == 1
