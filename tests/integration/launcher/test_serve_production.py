"""`torchserve-cpu serve` as a production command: real TorchServe on the user's own
fixed loopback ports, token authorization as configured, stopped by signals.

The ports are fixed on purpose (the point is that serve keeps them); a port already
taken on this machine fails the test with a message saying so.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from torchserve_cpu.launcher.errors import LauncherError
from torchserve_cpu.launcher.resources import METRICS_CONFIG
from torchserve_cpu.launcher.torchserve.properties import parse_properties, read_properties
from torchserve_cpu.launcher.torchserve.serve import (
    derived_config_text,
    exit_status,
    torchserve_command,
)
from torchserve_cpu.launcher.torchserve.tsconfig import DEFAULT_CONFIG, find_ts_config

INFERENCE, MANAGEMENT, METRICS, GRPC_INFERENCE, GRPC_MANAGEMENT = 8085, 8086, 8087, 7085, 7086
STOPPED_BY_SIGTERM = 128 + signal.SIGTERM  # the JVM's own status after its shutdown hook
KILLED = 128 + signal.SIGKILL


# -- config discovery and the derived config --------------------------------------------


def test_config_discovery_follows_torchserve_order(tmp_path: Path) -> None:
    from_env, from_flag, in_cwd = (tmp_path / name for name in ("env.p", "flag.p", DEFAULT_CONFIG))
    for path in (from_env, from_flag, in_cwd):
        path.write_text("default_workers_per_model=1\n")
    env = {"TS_CONFIG_FILE": str(from_env)}
    assert find_ts_config(env, from_flag, tmp_path) == from_env
    assert find_ts_config({}, from_flag, tmp_path) == from_flag
    assert find_ts_config({"TS_CONFIG_FILE": ""}, None, tmp_path) == in_cwd
    assert find_ts_config({}, Path("flag.p"), tmp_path) == from_flag  # relative to the cwd


@pytest.mark.parametrize(
    ("env", "flag", "named"),
    [
        ({"TS_CONFIG_FILE": "/nonexistent/ts.properties"}, None, "$TS_CONFIG_FILE"),
        ({}, Path("/nonexistent/flag.properties"), "--ts-config"),
        ({}, None, "the working directory"),
    ],
)
def test_missing_config_names_what_was_looked_for(
    tmp_path: Path, env: dict[str, str], flag: Path | None, named: str
) -> None:
    with pytest.raises(LauncherError, match="no TorchServe config") as error:
        find_ts_config(env, flag, tmp_path)
    looked_for = env.get("TS_CONFIG_FILE") or str(flag or tmp_path / DEFAULT_CONFIG)
    assert looked_for in str(error.value) and named in str(error.value)


def test_derived_config_differs_only_in_cpu_launcher_enable_and_metrics_config() -> None:
    original = (
        "# a user's config\n"
        "inference_address=https://0.0.0.0:8443\n"
        "cpu_launcher_enable=true\n"
        "cpu_launcher_args=--node_id 1\n"
        "vmargs=-Xmx4g -XX:+ExitOnOutOfMemoryError\n"
        'models={"a": {"1.0": {"marName": "a.mar", \\\n'
        '          "minWorkers": 2}}}\n'
        "keystore_pass: secret\n"
        "load_models=a.mar\\"  # a continuation at the very end, no newline
    )
    derived = derived_config_text(original)
    assert derived.startswith(original)  # every line of the user's, byte for byte
    expected = {**parse_properties(original), "cpu_launcher_enable": "false",
                "metrics_config": str(METRICS_CONFIG)}  # the handler's metrics declared
    assert parse_properties(derived) == expected


def test_derived_config_keeps_the_user_s_metrics_config() -> None:
    original = "metrics_mode=prometheus\nmetrics_config=/etc/ts/metrics.yaml\n"
    assert parse_properties(derived_config_text(original))["metrics_config"] == \
        "/etc/ts/metrics.yaml"


def test_implied_flags_are_dropped_and_stop_is_refused(tmp_path: Path) -> None:
    derived = tmp_path / "derived.properties"
    command = torchserve_command(derived, ["--foreground", "--ncs", "--start"])
    assert command[1:] == ["-m", "ts.model_server", "--start", "--ts-config", str(derived),
                           "--ncs"]
    with pytest.raises(LauncherError, match="--stop"):
        torchserve_command(derived, ["--stop"])


@pytest.mark.parametrize(
    ("command", "expected"),
    [(["true"], 0), (["sh", "-c", "exit 3"], 3), (["sh", "-c", "kill -KILL $$"], KILLED)],
)
def test_exit_status_is_the_code_or_128_plus_the_signal(command: list[str], expected: int) -> None:
    _, status = os.waitpid(os.posix_spawnp(command[0], command, os.environ), 0)
    assert exit_status(status) == expected


# -- real TorchServe ------------------------------------------------------------------------


@dataclass
class Served:
    """A running `launcher serve` process and the TorchServe under it."""

    process: subprocess.Popen
    directory: Path  # its working directory: logs/ and key_file.json land here
    temp: Path  # its TEMP: pid file, worker sockets, the private derived config
    frontend: psutil.Process
    workers: list[psutil.Process]
    answer: dict

    @property
    def pid_file(self) -> Path:
        return self.temp / ".model_server.pid"

    def log(self) -> str:
        return (self.directory / "serve.log").read_text(errors="replace")[-4000:]

    def exit_status(self, signum: int | None = None, timeout: float = 120) -> int:
        if signum is not None:
            self.process.send_signal(signum)
        return self.process.wait(timeout=timeout)


def user_config(directory: Path, store: Path | None = None, name: str = DEFAULT_CONFIG) -> Path:
    """A user's config: fixed loopback ports, token authorization on (the default)."""
    lines = [
        f"inference_address=http://127.0.0.1:{INFERENCE}",
        f"management_address=http://127.0.0.1:{MANAGEMENT}",
        f"metrics_address=http://127.0.0.1:{METRICS}",
        "grpc_inference_address=127.0.0.1",
        "grpc_management_address=127.0.0.1",
        f"grpc_inference_port={GRPC_INFERENCE}",
        f"grpc_management_port={GRPC_MANAGEMENT}",
        "default_workers_per_model=1",
        "load_models=probe.mar",
        "cpu_launcher_enable=true",
    ]
    if store is not None:
        lines.append(f"model_store={store}")
    path = directory / name
    path.write_text("\n".join(lines) + "\n")
    return path


def require_free_ports() -> None:
    for port in (INFERENCE, MANAGEMENT, METRICS, GRPC_INFERENCE, GRPC_MANAGEMENT):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as error:
                pytest.fail(f"port {port} on 127.0.0.1 is taken on this machine ({error}); "
                            "this test needs it free: it checks that serve keeps fixed ports")


def predict(key: str | None) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{INFERENCE}/predictions/probe", data=b"x", method="POST"
    )
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def inference_key(directory: Path) -> str | None:
    try:
        return json.loads((directory / "key_file.json").read_text())["inference"]["key"]
    except (OSError, ValueError, KeyError):
        return None  # not written yet (or half written)


def start_serve(
    directory: Path,
    registry: Path,
    args: list[str],
    env: dict[str, str] | None = None,
    command: list[str] | None = None,
    timeout: float = 180,
) -> Served:
    """Start serve in `directory` and wait until the probe model answers."""
    require_free_ports()
    temp = Path(tempfile.mkdtemp(prefix="ts-", dir="/tmp"))  # AF_UNIX paths are short
    ignored = ("TS_CONFIG_FILE", "TMPDIR", "TMP")  # TMPDIR would beat TEMP for the pid file
    process_env = {key: value for key, value in os.environ.items() if key not in ignored}
    process_env.update(TEMP=str(temp), TSCPU_REGISTRY_DIR=str(registry), PYTHONUNBUFFERED="1")
    process_env.update(env or {})
    with (directory / "serve.log").open("wb") as log:
        process = subprocess.Popen(
            [*(command or [sys.executable, "-m", "torchserve_cpu.launcher"]), "serve", *args],
            cwd=directory, env=process_env, stdout=log, stderr=subprocess.STDOUT,
        )
    served = None
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            key = inference_key(directory)
            try:
                status, body = predict(key) if key else (0, b"")
            except (urllib.error.URLError, ConnectionError):  # not listening yet
                status = 0
            if status == 200:
                frontend = psutil.Process(int((temp / ".model_server.pid").read_text()))
                served = Served(process, directory, temp, frontend, frontend.children(),
                                json.loads(body))
                return served
            time.sleep(0.5)
        raise AssertionError(f"serve did not serve in {timeout:.0f}s (exit {process.poll()}):\n"
                             + (directory / "serve.log").read_text(errors="replace")[-4000:])
    finally:
        if served is None:
            stop(process)


def stop(process: subprocess.Popen) -> None:
    """Teardown for a test that failed half way: the serve process started here."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def assert_all_gone(served: Served) -> None:
    for process in (served.frontend, *served.workers):
        assert not process.is_running(), f"pid {process.pid} outlived serve"
    assert not served.pid_file.exists()
    assert not list(served.temp.glob("torchserve-cpu-*")), "private derived config left"


@pytest.fixture(scope="module")
def production(probe_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """serve with the config found in its working directory (TorchServe's default)."""
    directory = tmp_path_factory.mktemp("serve-production")
    registry = directory / "registry"
    registry.mkdir()
    user_config(directory)
    served = start_serve(directory, registry, ["--model-store", str(probe_store), "--ncs"])
    try:
        yield served
    finally:
        stop(served.process)


def test_serves_on_the_configured_port(production: Served) -> None:
    listening = {
        (c.laddr.ip.removeprefix("::ffff:"), c.laddr.port)  # Java binds v4-mapped IPv6
        for c in production.frontend.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }
    assert {("127.0.0.1", port) for port in (INFERENCE, MANAGEMENT, METRICS)} <= listening
    assert production.frontend.ppid() == production.process.pid  # serve reaps it
    assert production.answer["placement"].startswith("cores=")  # pinned by the launcher


def test_torchserve_reads_the_user_config_with_the_launcher_off_and_metrics_declared(
    production: Served,
) -> None:
    arguments = production.frontend.cmdline()
    derived = Path(arguments[arguments.index("-f") + 1])
    assert derived.parent.parent == production.temp and derived.parent.stat().st_mode & 0o077 == 0
    user = read_properties(production.directory / DEFAULT_CONFIG)
    assert "metrics_config" not in user
    assert read_properties(derived) == {**user, "cpu_launcher_enable": "false",
                                        "metrics_config": str(METRICS_CONFIG)}


def test_token_authorization_stays_on(production: Served) -> None:
    status, body = predict(None)
    # TorchServe 0.12 answers a missing or wrong token with 400, not 401: its
    # InvalidKeyException is a ModelException, which HttpRequestHandler maps to BAD_REQUEST.
    assert status == 400 and b"Token Authorization failed" in body
    assert predict("not-the-key")[0] == 400
    status, body = predict(inference_key(production.directory))
    assert status == 200 and json.loads(body)["pid"] in {w.pid for w in production.workers}


def test_sigterm_stops_torchserve_and_exits_with_its_status(production: Served) -> None:
    """Runs last in this module: it stops the server."""
    assert production.exit_status(signal.SIGTERM) == STOPPED_BY_SIGTERM, production.log()
    assert_all_gone(production)
    assert not (production.directory / "key_file.json").exists()  # as torchserve --stop does
    assert "signal 15: stopping TorchServe" in production.log()


def test_sigint_stops_torchserve_like_sigterm(
    probe_store: Path, tmp_path: Path, registry_dir: Path
) -> None:
    """The console script, --ts-config and --models on the command line."""
    config = user_config(tmp_path, name="ts.properties")
    script = Path(sys.executable).parent / "torchserve-cpu"
    served = start_serve(
        tmp_path, registry_dir,
        ["--ts-config", str(config), "--model-store", str(probe_store), "--models", "probe.mar"],
        command=[str(script)],
    )
    try:
        assert served.exit_status(signal.SIGINT) == STOPPED_BY_SIGTERM, served.log()
        assert_all_gone(served)
        assert "signal 2: stopping TorchServe" in served.log()
    finally:
        stop(served.process)


def test_frontend_death_ends_serve_with_its_status(
    probe_store: Path, tmp_path: Path, registry_dir: Path
) -> None:
    """The config from $TS_CONFIG_FILE, the model store from the config."""
    config = user_config(tmp_path, store=probe_store, name="from-env.properties")
    served = start_serve(tmp_path, registry_dir, [], env={"TS_CONFIG_FILE": str(config)})
    try:
        served.frontend.send_signal(signal.SIGKILL)  # the frontend this test started
        assert served.exit_status() == KILLED, served.log()
        assert_all_gone(served)
    finally:
        stop(served.process)
