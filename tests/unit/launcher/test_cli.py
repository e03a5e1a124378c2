from __future__ import annotations

import json
from pathlib import Path

import pytest

from torchserve_cpu.launcher.cli import main

XEON = Path(__file__).resolve().parents[2] / "data" / "topologies" / "xeon-8180m-2s.lscpu"


def test_plan_json_for_the_8180m(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--topology-file", str(XEON), "--workers", "4", "--json"]) == 0
    workers = json.loads(capsys.readouterr().out)["workers"]
    assert [(w["cpus"][0], w["cpus"][-1], w["node"], w["threads"]) for w in workers] == [
        (0, 13, 0, 14),
        (14, 27, 0, 14),
        (28, 41, 1, 14),
        (42, 55, 1, 14),
    ]


def test_plan_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--topology-file", str(XEON), "--workers", "3"]) == 0
    out = capsys.readouterr().out
    assert "     2     1       14  28-41" in out and "leftover: 42-55" in out


def test_plan_from_a_ts_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.properties"
    config.write_text("cpu_launcher_args=--node_id 1\ndefault_workers_per_model=2\n")
    (tmp_path / "a").mkdir()  # an exploded archive without a manifest: defaults apply
    config.write_text(config.read_text() + f"model_store={tmp_path}\nload_models=a\n")
    assert main(["plan", "--topology-file", str(XEON), "--ts-config", str(config), "--json"]) == 0
    assert [w["node"] for w in json.loads(capsys.readouterr().out)["workers"]] == [1, 1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workers", "4", "--launcher-args=--bogus"], "--bogus"),
        (["--workers", "57"], "57 workers"),
        # no --workers and no config where TorchServe would look: which file, and the fixes
        ([], "no TorchServe config: looked for {cwd}/config.properties"),
    ],
)
def test_errors_exit_2_with_the_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TS_CONFIG_FILE", raising=False)
    assert main(["plan", "--topology-file", str(XEON), *argv]) == 2
    assert message.format(cwd=tmp_path) in capsys.readouterr().err


def test_plan_without_arguments_reads_config_properties_here(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 18: no models at start still plans what default_workers_per_model gives a model
    registered later; models at start are named per worker."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TS_CONFIG_FILE", raising=False)
    (tmp_path / "config.properties").write_text(
        "cpu_launcher_enable=true\ndefault_workers_per_model=2\n")
    assert main(["plan", "--topology-file", str(XEON)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["worker", "model", "node", "threads", "cpus"]
    assert [line.split()[1:3] for line in table[1:3]] == [["(registered", "later)"]] * 2
    (tmp_path / "a").mkdir()  # an exploded archive: defaults apply
    (tmp_path / "config.properties").write_text(
        f"default_workers_per_model=2\nmodel_store={tmp_path}\nload_models=a\n")
    assert main(["plan", "--topology-file", str(XEON)]) == 0
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines()[1:3]] == ["a", "a"]


def test_metrics_config_path_prints_the_shipped_metrics_yaml(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """What a plain `torchserve --start` user puts after metrics_config=."""
    assert main(["metrics-config-path"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.name == "metrics.yaml" and "tscpu_worker_placement" in path.read_text()


def aot_record(folder: Path, dtype: str, with_package: bool) -> None:
    """A record built here (this torch, this CPU's flags), its package beside it or not."""
    from torchserve_cpu.handlers.aot_package import InputSpec, PackageRecord, Runtime, isa_flags

    here = Runtime.here()
    record = PackageRecord(dtype=dtype, torch=here.torch, torch_git=here.torch_git,
                           cpu_flags=isa_flags(here.cpu_flags), build_cpu="test", vec_isa="",
                           min_batch=1, max_batch=4, inputs=(InputSpec((8,), "float32"),),
                           example_digest="x", reference=((0.0,),), package_bytes=3)
    (folder / f"aot-{dtype}.json").write_text(record.to_json())
    if with_package:
        (folder / f"aot-{dtype}.pt2").write_bytes(b"pt2")


def test_aot_inspect_takes_a_record_or_a_folder_of_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    aot_record(tmp_path, "fp32", with_package=True)
    assert main(["aot", "inspect", str(tmp_path / "aot-fp32.json")]) == 0
    assert "aot-fp32.json: runs here" in capsys.readouterr().out
    aot_record(tmp_path, "int8", with_package=False)
    assert main(["aot", "inspect", str(tmp_path)]) == 1  # one of them cannot run
    out = capsys.readouterr().out
    assert "aot-fp32.json: runs here" in out
    assert "aot-int8.json: cannot run here: aot-int8.pt2 is not beside the record" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["aot", "inspect", str(empty)]) == 2
    assert "a folder without aot-<dtype>.json records" in capsys.readouterr().err
