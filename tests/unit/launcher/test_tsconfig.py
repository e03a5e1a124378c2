from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from torchserve_cpu.launcher.errors import LauncherError
from torchserve_cpu.launcher.torchserve.tsconfig import model_entries, read_ts_config, worker_counts


def mar(store: Path, file: str, name: str, config_yaml: str | None = None) -> Path:
    """A minimal model archive: MANIFEST.json and an optional model-config.yaml."""
    model = {"modelName": name, "modelVersion": "1.0", "handler": "h.py"}
    if config_yaml is not None:
        model["configFile"] = "model-config.yaml"
    path = store / file
    with zipfile.ZipFile(path, "w") as bundle:
        bundle.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": model}))
        if config_yaml is not None:
            bundle.writestr("model-config.yaml", config_yaml)
    return path


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.properties"
    path.write_text(text)
    return path


@pytest.fixture
def store(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    store.mkdir()
    mar(store, "a.mar", "alpha")
    mar(store, "b.mar", "beta", "minWorkers: 3\nmaxWorkers: 4\n")
    mar(store, "c.mar", "gamma", "minWorkers: 3\n")  # no maxWorkers: TorchServe ignores it
    return store


def test_all_models_at_once_with_every_source_of_counts(tmp_path: Path, store: Path) -> None:
    models = {"alpha": {"1.0": {"minWorkers": 2}}, "gamma": {"1.0": {"minWorkers": 5}}}
    path = config(
        tmp_path,
        "cpu_launcher_enable=true\ncpu_launcher_args=--use_logical_core\n"
        f"default_workers_per_model=1\nmodel_store={store}\nload_models=a.mar,b.mar,g=c.mar\n"
        f"models={json.dumps(models)}\n",
    )
    parsed = read_ts_config(path)
    assert parsed.launcher_enabled and parsed.options.use_logical_core
    # alpha from models= JSON, beta from its model-config.yaml, g: renamed, default
    assert worker_counts(parsed, cpus=8) == {"alpha": 2, "beta": 3, "g": 1}


def test_load_all_and_default_workers_fall_back_to_cpus(tmp_path: Path, store: Path) -> None:
    parsed = read_ts_config(config(tmp_path, f"model_store={store}\nload_models=all\n"))
    assert not parsed.launcher_enabled
    assert worker_counts(parsed, cpus=2) == {"alpha": 2, "beta": 3, "gamma": 2}


def test_cli_models_override_load_models(tmp_path: Path, store: Path) -> None:
    parsed = read_ts_config(config(tmp_path, "load_models=a.mar\ndefault_workers_per_model=2"))
    entries = model_entries(parsed, 4, cli_models=["b.mar"], model_store=store)
    assert [(e.name, e.workers) for e in entries] == [("beta", 3)]


def test_url_models_use_defaults(tmp_path: Path) -> None:
    parsed = read_ts_config(
        config(tmp_path, "default_workers_per_model=2\nload_models=https://x/y/my-net.mar")
    )
    assert worker_counts(parsed, 4) == {"my_net": 2}


def test_exploded_archive_folder(tmp_path: Path) -> None:
    folder = tmp_path / "store" / "folder_model"
    (folder / "MAR-INF").mkdir(parents=True)
    (folder / "MAR-INF" / "MANIFEST.json").write_text(
        json.dumps({"model": {"modelName": "f", "configFile": "c.yaml"}})
    )
    (folder / "c.yaml").write_text("minWorkers: 2\nmaxWorkers: 2\n")
    parsed = read_ts_config(config(tmp_path, "load_models=folder_model"))
    assert worker_counts(parsed, 4, model_store=tmp_path / "store") == {"f": 2}


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("cpu_launcher_enable=yes", "cpu_launcher_enable"),
        ("cpu_launcher_args=--enable_jemalloc --enable_tcmalloc", "cpu_launcher_args"),
        ("default_workers_per_model=two\nload_models=x.mar", "default_workers_per_model"),
        ("models={not json", "models="),
        ("models=[1]", "models="),
        ('models={"alpha": {"1.0": {"minWorkers": "2"}}}\nload_models=a.mar', "minWorkers"),
        ("load_models=missing.mar", "load_models: missing.mar"),
        ("load_models=all", "load_models=all"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, store: Path, text: str, named: str) -> None:
    if "store" in named or "missing" in text or "a.mar" in text:
        text += f"\nmodel_store={store}"
    with pytest.raises(LauncherError, match=named):
        worker_counts(read_ts_config(config(tmp_path, text)), 4)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(LauncherError, match="nope.properties"):
        read_ts_config(tmp_path / "nope.properties")


def test_config_file_named_in_model_config_must_exist(tmp_path: Path, store: Path) -> None:
    broken = store / "broken.mar"
    with zipfile.ZipFile(broken, "w") as bundle:
        bundle.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {"configFile": "gone.yaml"}}))
    parsed = read_ts_config(config(tmp_path, f"model_store={store}\nload_models=broken.mar"))
    with pytest.raises(LauncherError, match="gone.yaml"):
        worker_counts(parsed, 4)


# ---- what the frontend makes of the file in its environment (ConfigManager) -------------

def test_env_reference_in_a_value_is_resolved_as_the_frontend_does(tmp_path: Path) -> None:
    path = config(tmp_path, "default_workers_per_model=$$POD_CPUS$$\nload_models=a.mar\n")
    mar(tmp_path, "a.mar", "a")
    ts = read_ts_config(path, environ={"POD_CPUS": "3"})
    assert worker_counts(ts, cpus=8, model_store=tmp_path) == {"a": 3}


def test_unset_env_reference_is_an_error_naming_key_and_variable(tmp_path: Path) -> None:
    path = config(tmp_path, "default_workers_per_model=$$POD_CPUS$$\n")
    with pytest.raises(LauncherError, match=r"default_workers_per_model.*\$\$POD_CPUS\$\$"):
        read_ts_config(path, environ={})


def test_ts_variables_override_only_with_enable_envvars_config(tmp_path: Path) -> None:
    """A pod sets TS_DEFAULT_WORKERS_PER_MODEL from limits.cpu (config/kubernetes)."""
    mar(tmp_path, "a.mar", "a")
    environ = {"TS_DEFAULT_WORKERS_PER_MODEL": "4", "TS_CPU_LAUNCHER_ENABLE": "true"}
    off = read_ts_config(config(tmp_path, "default_workers_per_model=2\nload_models=a.mar\n"),
                         environ=environ)
    assert worker_counts(off, cpus=8, model_store=tmp_path) == {"a": 2}
    assert not off.launcher_enabled
    on = read_ts_config(config(tmp_path, "enable_envvars_config=true\n"
                                         "default_workers_per_model=2\nload_models=a.mar\n"),
                        environ=environ)
    assert worker_counts(on, cpus=8, model_store=tmp_path) == {"a": 4}
    assert on.launcher_enabled
