"""Command line -> one frozen RunSettings: presets, quick mode, ready archives, mistakes."""

from pathlib import Path

import pytest

from benchmarks.cli import QUICK_SCENARIOS, main, parser, settings_from
from benchmarks.plan import load_for
from benchmarks.scenarios import SCENARIOS


def settings(*argv: str):
    return settings_from(parser().parse_args(["run", *argv]))


def test_default_fits_two_cores_and_runs_everything() -> None:
    s = settings()
    assert (s.load.workers, s.load.concurrency, s.load.requests) == (2, 8, 400)
    assert [c.name for c in s.cases] == ["resnet50", "resnet50-b8", "bert", "efficientnet_lite0"]
    assert len(s.scenarios) == len(SCENARIOS) and s.scenarios[0].name == "stock"


def test_quick_is_small() -> None:
    s = settings("--quick")
    assert [sc.name for sc in s.scenarios] == list(QUICK_SCENARIOS)
    assert [c.name for c in s.cases] == ["resnet50"] and s.load.requests <= 50


def test_tutorial_presets() -> None:
    part1 = settings("--preset", "tutorial-part1", "--models", "resnet50")
    assert (part1.load.workers, part1.load.concurrency, part1.load.requests) == (4, 100, 10000)
    part2 = settings("--preset", "tutorial-part2", "--models", "resnet50", "resnet50-b8")
    assert [(c.name, c.batch_size) for c in part2.cases] == [("resnet50-b32", 32)]
    assert (part2.load.concurrency, part2.load.requests) == (32, 8960)


def test_batches_get_enough_clients() -> None:
    s = settings("--models", "resnet50-b8")
    assert load_for(s.cases[0], s.load).concurrency == 2 * 2 * 8


def test_mistakes_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["run", "--scenarios", "fastest"]) == 2
    assert "choose from stock" in capsys.readouterr().err
    assert main(["run", "--archive", str(tmp_path / "m.mar")]) == 2
    assert "--input" in capsys.readouterr().err
