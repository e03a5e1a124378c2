"""`torchserve-cpu check` on real archives (torch-model-archiver's .mar, or the same zip
layout written here for archives the archiver would not make): exit 0 with what a worker
would serve, 1 naming every problem, 2 for a usage mistake."""

from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from tests.support.tiny_archive import TABULAR_CONFIG, TABULAR_MODEL, TINY_MODEL, archive_model
from torchserve_cpu.handlers import check
from torchserve_cpu.handlers.check import check_path
from torchserve_cpu.launcher.cli import main
from torchserve_cpu.launcher.resources import HANDLER_FILE

BIN = Path(sys.executable).parent


def run_check(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    code = main(["check", *argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def write_mar(path: Path, files: dict[str, bytes], model_file: str | None = "model.py",
              serialized: str | None = "weights.pt", handler: str = "ipex_handler.py") -> Path:
    """A .mar as torch-model-archiver lays it out: the files and MAR-INF/MANIFEST.json."""
    files = {handler: HANDLER_FILE.read_bytes(), **files}
    model = {"modelName": path.stem, "serializedFile": serialized, "handler": handler,
             "modelFile": model_file, "modelVersion": "1.0", "configFile": "model-config.yaml"}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps(
            {"runtime": "python", "model": {k: v for k, v in model.items() if v}}))
    return path


def state_bytes(model_source: str, tmp_path: Path) -> bytes:
    namespace: dict = {}
    exec(model_source, namespace)  # noqa: S102 - the test's own model source
    (cls,) = [v for v in namespace.values() if isinstance(v, type)
              and issubclass(v, torch.nn.Module) and v is not torch.nn.Module]
    torch.manual_seed(0)
    path = tmp_path / "state.pt"
    torch.save(cls().state_dict(), path)
    return path.read_bytes()


def config(**handler: object) -> bytes:
    return yaml.safe_dump({"handler": handler}).encode()


@pytest.fixture(scope="module")
def good_mar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("good")
    return archive_model(BIN, str(HANDLER_FILE), work / "src", work / "store", "tabular",
                         TABULAR_MODEL, TABULAR_CONFIG)


def test_a_good_archive_exits_0_with_what_a_worker_serves(
        good_mar: Path, capsys: pytest.CaptureFixture) -> None:
    code, out = run_check(capsys, str(good_mar))
    assert code == 0, out
    assert "task: tensor" in out and "model_class: TabularMLP" in out
    assert "example_input: 1x8 float32" in out and "example_output: 1x3 float32" in out
    assert "pipeline: default[ipex_or_native>" in out and "dtype: fp32" in out
    assert "gate: cosine 1.0" in out and "load_s: " in out
    assert out.rstrip().endswith("ok: a worker would serve this")


def test_a_typo_key_gets_a_did_you_mean_and_every_mistake_is_listed(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    mar = write_mar(tmp_path / "typo.mar", {
        "model.py": TABULAR_MODEL.encode(), "weights.pt": state_bytes(TABULAR_MODEL, tmp_path),
        "model-config.yaml": config(task="tensor", input_shape=[8], toopk=3, dtype="bf61",
                                    optimize=["trace", "frezee"])})
    code, out = run_check(capsys, str(mar))
    assert code == 1, out
    assert "3 problem(s):" in out
    assert "handler.toopk: unknown key; did you mean topk?" in out
    assert "handler.dtype: 'bf61' is not one of fp32, bf16, int8, auto; did you mean bf16?" in out
    assert "unknown step(s) ['frezee']" in out and "did you mean freeze?" in out


def test_two_module_classes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    two = TABULAR_MODEL + "\n\nclass Other(torch.nn.Module):\n    pass\n"
    mar = write_mar(tmp_path / "two.mar", {
        "model.py": two.encode(), "weights.pt": state_bytes(TABULAR_MODEL, tmp_path),
        "model-config.yaml": config(task="tensor", input_shape=[8])})
    code, out = run_check(capsys, str(mar))
    assert code == 1
    assert "model file model.py must define exactly one nn.Module, has ['Other', " \
        "'TabularMLP']" in out


class RunsCode:
    """Pickled, it would run a shell command when loaded."""

    def __init__(self, witness: Path) -> None:
        self.witness = witness

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.witness}",))


def test_weights_that_would_run_code_are_refused(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    witness = tmp_path / "code-ran"
    torch.save({"net.0.weight": RunsCode(witness)}, tmp_path / "evil.pt")
    mar = write_mar(tmp_path / "evil.mar", {
        "model.py": TABULAR_MODEL.encode(), "weights.pt": (tmp_path / "evil.pt").read_bytes(),
        "model-config.yaml": config(task="tensor", input_shape=[8])})
    code, out = run_check(capsys, str(mar))
    assert code == 1 and not witness.exists()
    assert "weights.pt: torch.load(weights_only=True) refuses it" in out
    assert "system" in out  # torch names the global it refused


def test_a_labels_file_of_the_wrong_size(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    mar = write_mar(tmp_path / "labels.mar", {
        "model.py": TINY_MODEL.encode(), "weights.pt": state_bytes(TINY_MODEL, tmp_path),
        "index_to_name.json": b'{"0": "a", "1": "b", "2": "c"}',
        "model-config.yaml": config(image_size=16, resize_size=16)})
    code, out = run_check(capsys, str(mar))
    assert code == 1
    assert "index_to_name.json names 3 classes but the model has 4 outputs" in out
    assert "example_output: 1x4 float32" in out


def test_a_tensor_model_without_input_shape(tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    mar = write_mar(tmp_path / "shape.mar", {
        "model.py": TABULAR_MODEL.encode(), "weights.pt": state_bytes(TABULAR_MODEL, tmp_path),
        "model-config.yaml": config(task="tensor")})
    code, out = run_check(capsys, str(mar))
    assert code == 1
    assert "handler.input_shape: task tensor needs the shape of one input" in out


def test_a_tabular_model_under_the_default_task(tmp_path: Path) -> None:
    report = check_path(write_mar(tmp_path / "default.mar", {
        "model.py": TABULAR_MODEL.encode(), "weights.pt": state_bytes(TABULAR_MODEL, tmp_path),
        "model-config.yaml": b"minWorkers: 1\n"}))
    (problem,) = report.problems
    assert problem.startswith("the model does not run on the example input: RuntimeError: "
                              "mat1 and mat2 shapes cannot be multiplied")
    assert "set handler.task: tensor and handler.input_shape" in problem


def test_a_model_folder_with_its_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "net.py").write_text(TABULAR_MODEL)
    (tmp_path / "net.pt").write_bytes(state_bytes(TABULAR_MODEL, tmp_path))
    (tmp_path / "model-config.yaml").write_bytes(config(task="tensor", input_shape=[8],
                                                        optimize="eager"))
    code, out = run_check(capsys, str(tmp_path), "--model-file", "net.py",
                          "--serialized-file", "net.pt",
                          "--config-file", str(tmp_path / "model-config.yaml"))
    assert code == 0, out
    assert "pipeline: eager[eager]" in out


@pytest.mark.parametrize("argv", [["missing.mar"], ["--config-file", "nope.yaml", "."],
                                  ["not-a-zip.mar"], ["."]])
def test_usage_mistakes_exit_2(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "not-a-zip.mar").write_text("hello")
    code, out = run_check(capsys, *argv)
    assert code == 2 and out.startswith("error: "), out


def test_an_archive_of_another_handler(tmp_path: Path) -> None:
    report = check_path(write_mar(tmp_path / "stock.mar", {
        "stock.py": b"from ts.torch_handler.image_classifier import ImageClassifier\n",
        "model.py": TINY_MODEL.encode(), "weights.pt": state_bytes(TINY_MODEL, tmp_path),
        "model-config.yaml": config(image_size=16, resize_size=16)}, handler="stock.py"))
    assert report.problems[0].startswith("handler stock.py is not torchserve-cpu's handler")


def test_a_load_slower_than_torchserve_allows_is_a_problem_naming_the_setting() -> None:
    assert check.startup_problems({}, 119.0) == []
    [default] = check.startup_problems({}, 130.0)
    assert "longer than the 120 s of TorchServe's default startupTimeout" in default
    assert "torchserve-cpu aot build" in default
    assert check.startup_problems({"startupTimeout": 600}, 130.0) == []
    [own] = check.startup_problems({"startupTimeout": 30}, 31.0)
    assert "the 30 s of model-config.yaml startupTimeout" in own
    assert check.startup_problems({"startupTimeout": "soon"}, 100.0) == []  # not an int: 120
