"""Bad configuration fails at start-up with a message naming the key or flag.

Launcher mistakes stop `torchserve-cpu serve` / `plan` with exit code 2 before any
TorchServe starts. Handler mistakes in model-config.yaml fail that model's worker with
`handler.<key>` in model_log.log while TorchServe keeps serving the other models; a
model that cannot be traced falls back to eager, says so, and serves.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks import loopback_torchserve as server
from benchmarks.loopback_torchserve import post
from torchserve_cpu.handlers.loading import model_class_from_file
from torchserve_cpu.launcher.resources import HANDLER_FILE
from torchserve_cpu.model_store.build import STORE_DIR

REPO = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
TINY_MODEL = HERE / "untraceable_model.py"
IMAGE = STORE_DIR / "samples" / "shapes.jpg"
TINY_HANDLER = {"task": "image_classification", "image_size": 32, "resize_size": 36,
                "topk": 3, "warmup_iterations": 1}


def run_launcher(*argv: str, cwd: Path, temp: Path | None = None
                 ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TEMP": str(temp)} if temp else None
    return subprocess.run([sys.executable, "-m", "torchserve_cpu.launcher", *argv],
                          capture_output=True, text=True, cwd=cwd, timeout=120, check=False,
                          env=env)


def tiny_archive(store: Path, name: str, handler: dict[str, object],
                 workers: int | None = 1) -> Path:
    """A .mar of the tiny untraceable model with the given `handler:` section (fast to
    build and to load, unlike the real models); workers None: TorchServe's default."""
    store.mkdir(parents=True, exist_ok=True)
    staging = store / f".{name}"
    staging.mkdir(exist_ok=True)
    weights = staging / "weights.pt"
    if not weights.exists():
        torch.manual_seed(0)
        torch.save(model_class_from_file(TINY_MODEL)().state_dict(), weights)
    config = staging / "model-config.yaml"
    settings: dict[str, object] = {"batchSize": 1, "responseTimeout": 60, "handler": handler}
    if workers is not None:
        settings.update(minWorkers=workers, maxWorkers=workers)
    config.write_text(yaml.safe_dump(settings))
    subprocess.run([str(Path(sys.executable).parent / "torch-model-archiver"),
                    "--model-name", name, "--version", "1.0",
                    "--model-file", str(TINY_MODEL), "--serialized-file", str(weights),
                    "--handler", str(HANDLER_FILE), "--config-file", str(config),
                    "--export-path", str(store), "--force"], check=True, timeout=120)
    return store / f"{name}.mar"


# ---- launcher: CLI exit codes and messages --------------------------------------------

LAUNCHER_CASES = {
    # case: (cpu_launcher_args, workers per model, text the message must contain)
    "unknown flag": ("--bogus", 1, "unknown flag --bogus"),
    "node that does not exist": ("--node_id 7", 1, "--node_id 7"),
    # sharing cores is the default policy; refusing them must stop the start-up
    "more workers than cores": ("--oversubscribe refuse", 3, "3 workers"),
}


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("tiny-store")
    tiny_archive(store, "tiny", TINY_HANDLER)
    # default_workers_per_model applies only to archives that do not set minWorkers
    tiny_archive(store, "tiny_default", TINY_HANDLER, workers=None)
    return store


def stop_leftover(run_dir: Path) -> None:
    """If a bug let `serve` start TorchServe after all, stop that instance (ours)."""
    if (run_dir / "tmp" / ".model_server.pid").exists():
        subprocess.run([str(Path(sys.executable).parent / "torchserve"), "--stop"],
                       env={**os.environ, "TEMP": str(run_dir / "tmp")}, cwd=run_dir,
                       capture_output=True, timeout=120, check=False)


@pytest.mark.parametrize("case", list(LAUNCHER_CASES))
def test_launcher_serve_refuses_to_start(case: str, tiny_store: Path, tmp_path: Path) -> None:
    args, workers, message = LAUNCHER_CASES[case]
    config = tmp_path / "config.properties"
    config.write_text("disable_token_authorization=true\ncpu_launcher_enable=true\n"
                      f"cpu_launcher_args={args}\ndefault_workers_per_model={workers}\n"
                      "load_models=tiny_default.mar\n")
    run_dir = tmp_path / "run"
    (run_dir / "tmp").mkdir(parents=True)
    try:
        result = run_launcher("serve", "--ts-config", str(config), "--model-store",
                              str(tiny_store), cwd=tmp_path, temp=run_dir / "tmp")
    finally:
        stop_leftover(run_dir)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (run_dir / "tmp" / ".model_server.pid").exists()  # no TorchServe was started


@pytest.mark.parametrize("case", list(LAUNCHER_CASES))
def test_launcher_plan_exits_2(case: str, tmp_path: Path) -> None:
    args, workers, message = LAUNCHER_CASES[case]
    result = run_launcher("plan", f"--launcher-args={args}", "--workers", str(workers),
                          cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


# ---- handler: model-config.yaml mistakes and a model that cannot be traced -------------

BAD_HANDLER_VALUES = {
    # archive name: (bad part of the handler: section, text model_log.log must show)
    "bad_dtype": ({"dtype": "fp16"}, "handler.dtype: 'fp16' is not one of fp32, bf16"),
    "bad_max_length": ({"max_length": "long"}, "handler.max_length: expected an integer"),
    "bad_key": ({"optimise": "eager"}, "handler.optimise: unknown key"),
    "bad_step": ({"optimize": ["trace", "fuse"]}, "handler.optimize: unknown step(s) ['fuse']"),
}


@pytest.fixture(scope="module")
def mixed_server(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        server.TorchServe]:
    """The untraceable model and the badly configured ones in one TorchServe."""
    for name, (bad, _) in BAD_HANDLER_VALUES.items():
        tiny_archive(tiny_store, name, {**TINY_HANDLER, **bad})
    models = ["tiny.mar", *(f"{name}.mar" for name in BAD_HANDLER_VALUES)]
    ts = server.start(REPO / "config" / "config.properties", tiny_store, models,
                      run_dir=tmp_path_factory.mktemp("mixed-ts"))
    try:
        ts.wait_ready(["tiny"], timeout=300)
        yield ts
    finally:
        ts.stop()


def model_log(ts: server.TorchServe) -> str:
    path = ts.log_dir / "model_log.log"
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.mark.parametrize("name", list(BAD_HANDLER_VALUES))
def test_bad_handler_value_names_the_key(mixed_server: server.TorchServe, name: str) -> None:
    message = BAD_HANDLER_VALUES[name][1]
    deadline = time.monotonic() + 120
    while message not in model_log(mixed_server) and time.monotonic() < deadline:
        time.sleep(1)
    assert message in model_log(mixed_server), mixed_server.log_tail()
    assert mixed_server.alive()
    assert mixed_server.worker_pids(name) == []  # never READY


def test_untraceable_model_falls_back_to_eager_and_serves(
        mixed_server: server.TorchServe) -> None:
    reply = post(f"{mixed_server.inference_url}/predictions/tiny", IMAGE.read_bytes(),
                 "image/jpeg")
    assert reply.status == 200, reply.body
    assert len(reply.json()) == 3  # the stock answer: {label: probability}, top 3
    lines = model_log(mixed_server).splitlines()
    failed = [line for line in lines if "optimizer: default[" in line and "failed:" in line]
    assert failed and "trace" in failed[0], "\n".join(lines[-40:])
    ready = [line for line in lines if "ready model=tiny" in line]
    assert ready and "pipeline=eager[eager]" in ready[0], "\n".join(lines[-40:])


def test_a_configuration_mistake_is_logged_once_without_a_traceback(
        mixed_server: server.TorchServe) -> None:
    """TorchServe restarts a failed worker forever: the mistake is one line, once, however
    often it retries, and no retry prints a traceback."""
    def starts(name: str) -> int:
        return model_log(mixed_server).count(f"model_name: {name}, batchSize")

    deadline = time.monotonic() + 120
    while min(map(starts, BAD_HANDLER_VALUES)) < 3 and time.monotonic() < deadline:
        time.sleep(1)
    assert min(map(starts, BAD_HANDLER_VALUES)) >= 3, mixed_server.log_tail()  # retried
    lines = model_log(mixed_server).splitlines()
    for name, (_, message) in BAD_HANDLER_VALUES.items():
        named = [line for line in lines if message in line]
        assert len(named) == 1, named
        assert f"model {name} cannot start, fix its archive" in named[0]
    assert not [line for line in lines if "Traceback" in line], "\n".join(lines[-60:])
