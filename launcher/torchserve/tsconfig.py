"""What TorchServe will run, read from its config.properties and model archives.

Worker counts follow the frontend's own rules (ModelServer.initModelStore): every model
in load_models (or the -m/--models list, which overrides it) starts
default_workers_per_model workers, unless the `models=` JSON gives that model version a
minWorkers, unless the archive's model-config.yaml gives minWorkers > 0 with
maxWorkers >= minWorkers. The plan needs all models at once: blocks are disjoint across
models, which TorchServe's per-model --ninstances/--rank never were.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from torchserve_cpu.launcher.errors import LauncherError
from torchserve_cpu.launcher.planning import LauncherOptions, parse_launcher_args
from torchserve_cpu.launcher.torchserve.processes import Frontend
from torchserve_cpu.launcher.torchserve.properties import parse_properties

ENABLE_KEY = "cpu_launcher_enable"
ENV_REFERENCE = re.compile(r"\$\$([^$]+[^$])\$\$")  # ConfigManager.resolveEnvVarVals
ARGS_KEY = "cpu_launcher_args"
ARCHIVE_SUFFIXES = (".mar", ".model")


@dataclass(frozen=True)
class TsConfig:
    """The launcher-relevant part of one config.properties."""

    path: Path
    properties: Mapping[str, str] = field(hash=False)
    launcher_enabled: bool
    options: LauncherOptions


@dataclass(frozen=True)
class ModelEntry:
    name: str
    workers: int
    archive: Path | None  # None for a URL the launcher cannot open


def frontend_properties(
    properties: Mapping[str, str], environ: Mapping[str, str], path: Path | str = "config"
) -> dict[str, str]:
    """The values the Java frontend ends up with (ConfigManager): `$$NAME$$` in a value is
    replaced by that environment variable, then, with enable_envvars_config=true, a
    `TS_<KEY>` variable overrides `<key>` (how a pod sets default_workers_per_model)."""

    def lookup(key: str, match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise LauncherError(f"{path}: {key} refers to $${name}$$ but ${name} is not set")
        return environ[name]

    resolved = {
        key: ENV_REFERENCE.sub(lambda match, key=key: lookup(key, match), value)
        for key, value in properties.items()
    }
    if resolved.get("enable_envvars_config", "").strip().lower() == "true":
        for name, value in environ.items():
            if name.startswith("TS_") and name != CONFIG_FILE_ENV:
                resolved[name[3:].lower()] = value
    return resolved


def read_ts_config(path: Path, environ: Mapping[str, str] | None = None) -> TsConfig:
    """Parse a config.properties as the frontend will see it in `environ` (default: this
    process's); a bad launcher key raises LauncherError naming it."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise LauncherError(f"TorchServe config {path}: {error.strerror}") from None
    properties = frontend_properties(
        parse_properties(text), os.environ if environ is None else environ, path
    )
    enabled_text = properties.get(ENABLE_KEY, "false").strip().lower()
    if enabled_text not in ("true", "false"):
        raise LauncherError(f"{path}: {ENABLE_KEY}={enabled_text!r}; use true or false")
    try:
        options = parse_launcher_args(properties.get(ARGS_KEY, ""))
    except LauncherError as error:
        raise LauncherError(f"{path}: {error}") from None
    return TsConfig(Path(path), properties, enabled_text == "true", options)


def default_workers(config: TsConfig, cpus: int) -> int:
    """default_workers_per_model, else the frontend's fallback: one per CPU it sees."""
    text = config.properties.get("default_workers_per_model", "").strip()
    if not text:
        return cpus
    try:
        value = int(text)
    except ValueError:
        raise LauncherError(
            f"{config.path}: default_workers_per_model={text!r} is not an integer"
        ) from None
    return value if value > 0 else cpus


def model_entries(
    config: TsConfig,
    cpus: int,
    cli_models: Sequence[str] = (),
    model_store: Path | None = None,
) -> list[ModelEntry]:
    """Every model TorchServe loads at start-up with its worker count."""
    store = model_store or _store_from(config)
    listed = ",".join(cli_models) if cli_models else config.properties.get("load_models", "")
    per_model = _models_json(config)
    entries = [item.strip() for item in listed.split(",") if item.strip()]
    if not entries and per_model:  # only a models= JSON: load what it names
        entries = [
            f"{name}={next(iter(versions.values())).get('marName', name + '.mar')}"
            for name, versions in per_model.items()
        ]
    if len(entries) == 1 and entries[0].lower() == "all":
        entries = _all_archives(store)
    fallback = default_workers(config, cpus)
    return [_entry(config, item, store, per_model, fallback) for item in entries]


def worker_counts(
    config: TsConfig, cpus: int, cli_models: Sequence[str] = (), model_store: Path | None = None
) -> dict[str, int]:
    return {e.name: e.workers for e in model_entries(config, cpus, cli_models, model_store)}


def _store_from(config: TsConfig) -> Path | None:
    text = config.properties.get("model_store", "").strip()
    if not text:
        return None
    store = Path(text)
    return store if store.is_absolute() else config.path.parent / store


def _models_json(config: TsConfig) -> dict[str, dict[str, dict]]:
    text = config.properties.get("models", "").strip()
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError as error:
        raise LauncherError(f"{config.path}: models= is not valid JSON: {error}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise LauncherError(f'{config.path}: models= must look like {{"name": {{"1.0": {{...}}}}}}')
    return data


def _all_archives(store: Path | None) -> list[str]:
    if store is None or not store.is_dir():
        raise LauncherError(f"load_models=all needs an existing model_store, got {store}")
    return [
        p.name
        for p in sorted(store.iterdir())
        if not p.name.startswith(".") and (p.is_dir() or p.suffix in ARCHIVE_SUFFIXES)
    ]


def _entry(
    config: TsConfig,
    item: str,
    store: Path | None,
    per_model: dict[str, dict[str, dict]],
    fallback: int,
) -> ModelEntry:
    name, _, url = item.partition("=") if "=" in item else ("", "", item)
    if re.match(r"https?://", url, re.IGNORECASE):
        manifest, yaml_config, archive = {}, {}, None
    else:
        archive = Path(url) if Path(url).is_absolute() or store is None else store / url
        if not archive.exists():
            raise LauncherError(f"load_models: {url} not found in model_store {store}")
        manifest, yaml_config = read_archive(archive)
    model = manifest.get("model", {}) if isinstance(manifest, dict) else {}
    name = name or model.get("modelName") or _default_name(url)
    version = str(model.get("modelVersion") or "1.0")
    workers = _json_min_workers(config, per_model.get(name, {}), name, version, fallback)
    low, high = yaml_config.get("minWorkers", 0), yaml_config.get("maxWorkers", 0)
    if isinstance(low, int) and isinstance(high, int) and low > 0 and high >= low:
        workers = low
    return ModelEntry(name, workers, archive)


def _json_min_workers(
    config: TsConfig, versions: dict[str, dict], name: str, version: str, fallback: int
) -> int:
    chosen = versions.get(version)
    if chosen is None:
        chosen = next((v for v in versions.values() if v.get("defaultVersion")), None)
    if chosen is None and len(versions) == 1:
        chosen = next(iter(versions.values()))
    if not chosen or "minWorkers" not in chosen:
        return fallback
    value = chosen["minWorkers"]
    if not isinstance(value, int) or value < 0:
        raise LauncherError(f"{config.path}: models.{name}.{version}.minWorkers={value!r}")
    return value


def _default_name(url: str) -> str:
    """The frontend's getDefaultModelName: file name without extension, \\W -> _."""
    base = url.rstrip("/").rsplit("/", 1)[-1]
    if ".model" in base or ".mar" in base:
        base = base[: base.rfind(".")]
    return re.sub(r"(\W|^_)", "_", base)


def read_archive(archive: Path) -> tuple[dict, dict]:
    """MANIFEST.json and the model-config.yaml it names, from a .mar (zip) or folder."""
    try:
        if archive.is_dir():
            read = lambda member: (archive / member).read_bytes()  # noqa: E731
            return _manifest_and_config(read, archive)
        if not zipfile.is_zipfile(archive):
            return {}, {}  # .tar.gz and friends: TorchServe defaults apply
        with zipfile.ZipFile(archive) as bundle:
            return _manifest_and_config(bundle.read, archive)
    except (OSError, zipfile.BadZipFile) as error:
        raise LauncherError(f"model archive {archive}: {error}") from None


def _manifest_and_config(read, archive: Path) -> tuple[dict, dict]:
    try:
        manifest = json.loads(read("MAR-INF/MANIFEST.json"))
    except (KeyError, FileNotFoundError):
        return {}, {}
    except ValueError as error:
        raise LauncherError(f"{archive}: MAR-INF/MANIFEST.json: {error}") from None
    config_file = manifest.get("model", {}).get("configFile")
    if not config_file:
        return manifest, {}
    try:
        loaded = yaml.safe_load(read(config_file)) or {}
    except (KeyError, FileNotFoundError):
        raise LauncherError(f"{archive}: configFile {config_file} is missing") from None
    except yaml.YAMLError as error:
        raise LauncherError(f"{archive}: {config_file}: {error}") from None
    return manifest, loaded if isinstance(loaded, dict) else {}


# -- where TorchServe's config is ------------------------------------------------------------

CONFIG_FILE_ENV = "TS_CONFIG_FILE"  # TorchServe's own
CONFIG_ENV = "TSCPU_CONFIG_FILE"  # set by `torchserve-cpu serve`: the user's config
DEFAULT_CONFIG = "config.properties"


def find_ts_config(environ: Mapping[str, str], ts_config: Path | None, cwd: Path) -> Path:
    """The config TorchServe would read, in its own order (ConfigManager):
    $TS_CONFIG_FILE, then --ts-config, then config.properties in the working directory."""
    if environ.get(CONFIG_FILE_ENV):
        candidate, source = Path(environ[CONFIG_FILE_ENV]), f"${CONFIG_FILE_ENV}"
    elif ts_config is not None:
        candidate, source = Path(ts_config), "--ts-config"
    else:
        candidate, source = cwd / DEFAULT_CONFIG, "the working directory"
    candidate = candidate if candidate.is_absolute() else cwd / candidate
    if not candidate.is_file():
        raise LauncherError(
            f"no TorchServe config: looked for {candidate} (from {source}); set "
            f"{CONFIG_FILE_ENV}, give --ts-config FILE or run where {DEFAULT_CONFIG} is"
        )
    return candidate


def find_config(
    environ: Mapping[str, str], frontend: Frontend | None
) -> tuple[Path | None, str]:
    """The config file and where its name came from, in TorchServe's own order
    (ConfigManager: $TS_CONFIG_FILE, then -f, then config.properties in its cwd)."""
    for name in (CONFIG_ENV, CONFIG_FILE_ENV):
        if environ.get(name):
            return Path(environ[name]), f"${name}"
    if frontend is not None and frontend.config is not None:
        return frontend.config, f"-f of TorchServe frontend pid {frontend.pid}"
    if frontend is not None and frontend.cwd is not None:
        candidate = frontend.cwd / DEFAULT_CONFIG
        if candidate.is_file():
            return candidate, f"config.properties in the cwd of frontend pid {frontend.pid}"
    return None, ""
