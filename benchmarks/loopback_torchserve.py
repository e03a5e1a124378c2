"""A real TorchServe on free loopback ports with its own TEMP, for tests, benchmarks and
the demo (production runs `torchserve-cpu serve`, which keeps the user's settings).

Every instance gets its own run directory: TorchServe keeps its pid file in TEMP and
its logs under the working directory, so two servers (a test and a benchmark, say)
only coexist when each has its own TEMP and cwd. Addresses are rewritten to free
127.0.0.1 ports so nothing is ever exposed beyond the machine.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torchserve_cpu.launcher.host.procfs import process_stat
from torchserve_cpu.launcher.torchserve.properties import read_properties
from torchserve_cpu.launcher.torchserve.serve import (
    Prepared,
    derived_config_path,
    prepare,
    venv_bin,
)

ADDRESS_KEYS = ("inference_address", "management_address", "metrics_address")


def write_properties(path: Path, properties: Mapping[str, str]) -> None:
    """A config.properties for a test or benchmark server (the product only reads them)."""
    lines = [f"{key}={value}" for key, value in properties.items()]
    Path(path).write_text("\n".join(lines) + "\n")


class ServerError(RuntimeError):
    """TorchServe did not start, or did not load its models in time."""


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 now, below the kernel's ephemeral
    range so outgoing connections do not take them before TorchServe binds them.

    All are held open until every one is chosen: ports picked one by one can repeat
    (CI once gave the management API and gRPC the same port).
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    held: list[socket.socket] = []
    try:
        for port in random.sample(range(max(1024, low - 12000), low), 64):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            held.append(sock)
            if len(held) == count:
                return [int(s.getsockname()[1]) for s in held]
        raise ServerError(f"no {count} free ports below {low} on 127.0.0.1")
    finally:
        for sock in held:
            sock.close()


def loopback_properties(properties: Mapping[str, str]) -> dict[str, str]:
    """The same settings with each API bound to a fresh 127.0.0.1 port, and token
    authorization off unless the config says otherwise: callers here send no token."""
    rewritten = dict(properties)
    rewritten.setdefault("disable_token_authorization", "true")
    ports = free_ports(len(ADDRESS_KEYS) + 2)
    for key, port in zip(ADDRESS_KEYS, ports, strict=False):
        rewritten[key] = f"http://127.0.0.1:{port}"
    # gRPC ports default to 7070/7071 and would collide between instances.
    rewritten["grpc_inference_port"] = str(ports[-2])
    rewritten["grpc_management_port"] = str(ports[-1])
    return rewritten


def http_json(url: str, method: str = "GET", timeout: float = 10.0) -> object:
    """Decoded JSON body of one request; raises urllib errors unchanged."""
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8"))


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def post(url: str, body: bytes, content_type: str | None = None, timeout: float = 120) -> Reply:
    """POST and return status + body, 4xx/5xx included (no exception)."""
    request = urllib.request.Request(url, data=body, method="POST")
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(response.status, response.read())
    except urllib.error.HTTPError as error:
        return Reply(error.code, error.read())


@dataclass
class TorchServe:
    """Handle on a running TorchServe frontend started by `start`."""

    pid: int
    run_dir: Path
    config_path: Path
    properties: dict[str, str]
    env: dict[str, str] = field(repr=False)
    bin_dir: Path = field(default_factory=venv_bin)  # the environment TorchServe runs from

    @property
    def inference_url(self) -> str:
        return self.properties["inference_address"]

    @property
    def management_url(self) -> str:
        return self.properties["management_address"]

    @property
    def metrics_url(self) -> str:
        return self.properties["metrics_address"]

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        stat = process_stat(self.pid)
        return stat is not None and not stat.exited

    def describe(self, model_name: str) -> dict:
        """TorchServe's own description of one model (first version)."""
        described = http_json(f"{self.management_url}/models/{model_name}")
        assert isinstance(described, list)
        return described[0]

    def models(self) -> list[str]:
        listed = http_json(f"{self.management_url}/models")
        assert isinstance(listed, dict)
        return [entry["modelName"] for entry in listed.get("models", [])]

    def worker_pids(self, model_name: str | None = None) -> list[int]:
        """Pids of READY workers, of one model or of all models."""
        names = [model_name] if model_name else self.models()
        pids: list[int] = []
        for name in names:
            for worker in self.describe(name).get("workers", []):
                if worker.get("status") == "READY" and int(worker.get("pid", -1)) > 0:
                    pids.append(int(worker["pid"]))
        return pids

    def wait_ready(self, model_names: Sequence[str], timeout: float = 300.0) -> None:
        """Block until every worker of every named model reports READY."""
        deadline = time.monotonic() + timeout
        pending = list(model_names)
        while pending:
            if not self.alive():
                raise ServerError(f"TorchServe exited during start-up\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ServerError(
                    f"models {pending} not READY after {timeout:.0f}s\n{self.log_tail()}"
                )
            pending = [name for name in pending if not self._ready(name)]
            if pending:
                time.sleep(0.5)

    def _ready(self, model_name: str) -> bool:
        try:
            workers = self.describe(model_name).get("workers", [])
        except (urllib.error.URLError, OSError, ValueError):
            return False
        return bool(workers) and all(w.get("status") == "READY" for w in workers)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the frontend and worker logs, for error messages."""
        parts = []
        # start.log holds the frontend's own stdout/stderr (e.g. a failed bind)
        for path in (self.run_dir / "start.log", self.log_dir / "ts_log.log",
                     self.log_dir / "model_log.log"):
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} ---\n" + "\n".join(tail))
        return "\n".join(parts)

    def stop(self, timeout: float = 60.0) -> None:
        """Stop this instance (and only it) and wait until its frontend is gone."""
        if not self.alive():
            return
        subprocess.run(
            [str(self.bin_dir / "torchserve"), "--stop"],
            env=self.env,
            cwd=self.run_dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.alive():  # our own process: safe to end by pid
            os.kill(self.pid, 9)

    def __enter__(self) -> TorchServe:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def server_env(run_dir: Path, extra: Mapping[str, str] | None = None,
               bin_dir: Path | None = None) -> dict[str, str]:
    """Environment for the frontend: own TEMP, logs in run_dir, its venv first on PATH."""
    env = dict(os.environ)
    # TEMP holds the pid file and the workers' Unix sockets, whose paths may not exceed
    # 107 bytes (AF_UNIX): a deep run_dir (pytest's tmp_path) is too long, so TEMP is a
    # short directory of its own, linked from run_dir for people reading the logs.
    tmp = Path(tempfile.mkdtemp(prefix="ts-", dir="/tmp"))
    link = run_dir / "tmp"
    if link.is_symlink():
        link.unlink()
    if not link.exists():
        link.symlink_to(tmp)
    env["TEMP"] = str(tmp)
    env["LOG_LOCATION"] = str(run_dir / "logs")
    env["METRICS_LOCATION"] = str(run_dir / "logs")
    env["PATH"] = f"{bin_dir or venv_bin()}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


def start(
    ts_config: Path,
    model_store: Path,
    models: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    run_dir: Path | None = None,
    bin_dir: Path | None = None,
) -> TorchServe:
    """Start TorchServe with `ts_config` rebound to free loopback ports.

    `models` are `name=file.mar` or `file.mar` entries as for `torchserve --models`;
    `bin_dir` is the environment to run it from (default: this interpreter's).
    The caller waits with `wait_ready` and must `stop` the returned handle.
    """
    run_dir = Path(run_dir or tempfile.mkdtemp(prefix="torchserve-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    properties = loopback_properties(read_properties(Path(ts_config)))
    properties["model_store"] = str(Path(model_store).resolve())
    config_path = run_dir / "config.properties"
    write_properties(config_path, properties)
    bin_dir = Path(bin_dir or venv_bin())
    process_env = server_env(run_dir, env, bin_dir)
    command = [
        str(bin_dir / "torchserve"),
        "--start",
        "--ncs",
        "--ts-config",
        str(config_path),
        "--model-store",
        str(Path(model_store).resolve()),
    ]
    if models:
        command += ["--models", *models]
    # Output goes to a file, not a pipe: the detached Java frontend inherits these
    # descriptors and would hold a pipe open for its whole life.
    start_log = run_dir / "start.log"
    with start_log.open("wb") as output:
        result = subprocess.run(command, env=process_env, cwd=run_dir, stdout=output,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=120)
    pid_file = Path(process_env["TEMP"]) / ".model_server.pid"
    if result.returncode != 0 or not pid_file.exists():
        raise ServerError(
            f"torchserve --start failed ({result.returncode}): {start_log.read_text()[-2000:]}"
        )
    return TorchServe(
        pid=int(pid_file.read_text().strip()),
        run_dir=run_dir,
        config_path=config_path,
        properties=properties,
        env=process_env,
        bin_dir=bin_dir,
    )


def start_with_launcher(
    ts_config: Path,
    model_store: Path,
    models: Sequence[str] = (),
    run_dir: Path | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> tuple[TorchServe, Prepared]:
    """What `launcher serve` starts (plan checked, allocator preloaded, derived config), on
    loopback ports; the caller waits with `wait_ready` and must `stop` the handle."""
    prepared = prepare(ts_config, model_store, models)
    run_dir = Path(run_dir or tempfile.mkdtemp(prefix="torchserve-cpu-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**prepared.env, **(extra_env or {})}
    handle = start(
        derived_config_path(prepared, run_dir), Path(model_store), models, env=env, run_dir=run_dir
    )
    return handle, prepared
