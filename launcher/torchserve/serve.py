"""`torchserve-cpu serve`: TorchServe in the foreground, workers pinned by the launcher.

TorchServe gets the user's config unchanged except cpu_launcher_enable=false, so its own
run_cpu wrapper does not pin workers a second time, and, when the user names none, the
metrics_config that declares the handler's metrics; workers find the user's original
config through $TSCPU_CONFIG_FILE and pin themselves (launcher.worker). Addresses, token
authorization, TEMP (pid file, worker sockets) and log locations stay the user's.

Exit status: the Java frontend's. It is its exit code, or 128+N when signal N killed it
(the shell's convention). SIGTERM or SIGINT to serve stops TorchServe as `torchserve
--stop` does, with SIGTERM to the frontend; the JVM runs TorchServe's shutdown hook and
exits 143 (128+15) itself, so a requested stop exits 143. A frontend that does not stop
within STOP_TIMEOUT_S is killed: 137.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from torchserve_cpu.launcher.errors import LauncherError
from torchserve_cpu.launcher.host import Topology, allowed_topology, parent_pid
from torchserve_cpu.launcher.planning import (
    AllocatorChoice,
    Demand,
    LauncherOptions,
    Plan,
    Pool,
    assign,
    choose_allocator,
    process_env,
    render_plan,
)
from torchserve_cpu.launcher.resources import METRICS_CONFIG
from torchserve_cpu.launcher.torchserve.properties import parse_properties, read_properties
from torchserve_cpu.launcher.torchserve.tsconfig import (
    CONFIG_ENV,
    CONFIG_FILE_ENV,
    ENABLE_KEY,
    find_ts_config,
    model_entries,
    read_ts_config,
)

log = logging.getLogger(__name__)

PID_FILE = ".model_server.pid"  # ts/model_server.py keeps it in tempfile.gettempdir()
METRICS_CONFIG_KEY = "metrics_config"
KEY_FILE = "key_file.json"  # TokenAuthorization writes it in the frontend's cwd
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
STOP_TIMEOUT_S = 60.0  # what `torchserve --stop --foreground` waits
ORPHAN_TIMEOUT_S = 10.0  # workers left by a dead frontend exit once its socket closes
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


class ServeError(RuntimeError):
    """TorchServe did not start."""


@dataclass(frozen=True)
class Prepared:
    """Everything decided before TorchServe starts."""

    config_path: Path
    env: dict[str, str]
    plan: Plan | None  # None when the config does not enable the launcher
    allocator: AllocatorChoice | None
    models: dict[str, int]


def prepare(
    ts_config: Path,
    model_store: Path,
    models: Sequence[str] = (),
    base_env: Mapping[str, str] | None = None,
) -> Prepared:
    """Validate config and plan up front; errors name the key or flag."""
    base = dict(os.environ if base_env is None else base_env)
    config = read_ts_config(Path(ts_config))
    topology = allowed_topology()
    entries = model_entries(config, len(topology.cpus), models, Path(model_store))
    counts = {entry.name: entry.workers for entry in entries}
    if not config.launcher_enabled:
        log.warning("%s=true is not set in %s: workers will not be pinned", ENABLE_KEY, ts_config)
        return Prepared(Path(ts_config), {}, None, None, counts)
    the_plan = start_preview(topology, config.options, sum(counts.values()),
                             worker_models(counts))
    allocator = choose_allocator(config.options)
    if allocator.path is None:
        log.info("launcher: allocator glibc (%s)", allocator.reason)
    env = process_env(config.options, allocator, base)
    env[CONFIG_ENV] = str(Path(ts_config).resolve())
    return Prepared(Path(ts_config), env, the_plan, allocator, counts)


def worker_models(counts: Mapping[str, int]) -> list[str]:
    """Each start-up worker's model, in TorchServe's order of loading."""
    return [name for name, workers in counts.items() for _ in range(workers)]


def start_preview(topology: Topology, options: LauncherOptions, workers: int,
                  models: Sequence[str] = ()) -> Plan:
    """Where the workers of the models loaded at start will sit, computed as the workers
    themselves will (launcher.balance); raises now, naming the flag, if the options cannot
    be planned at all. Models registered later re-divide the cores at run time."""
    pool = Pool(topology.cpu_ids, topology.cpu_quota, options.args)
    demands = [Demand((index, 0), models[index] if index < len(models) else "", pool, index)
               for index in range(max(1, workers))]
    seats = assign(topology, demands)
    if seats.shared() and options.oversubscribe == "refuse":
        raise LauncherError(
            f"{workers} workers at start (default_workers_per_model / minWorkers / models=) "
            f"need more disjoint core blocks than the {len(topology.cpus)} allowed CPUs hold, "
            "and cpu_launcher_args says --oversubscribe refuse"
        )
    blocks = tuple(seats.seats[d.key].block for d in demands) if workers else ()
    used = {cpu for block in blocks for cpu in block.cpus}
    leftover = tuple(cpu for cpu in topology.cpu_ids if cpu not in used)
    return Plan(blocks, workers, leftover, seats.notes, options)


def find_model_store(config_path: Path, model_store: Path | None) -> Path:
    """--model-store, else the config's model_store (ts/model_server.py's order)."""
    if model_store is not None:
        return Path(model_store)
    configured = read_properties(config_path).get("model_store", "").strip()
    if not configured:
        raise LauncherError(f"no model store: give --model-store DIR or set model_store in "
                            f"{config_path}")
    return Path(configured)


def derived_config_text(text: str) -> str:
    """The user's config verbatim, then cpu_launcher_enable=false: the last occurrence of a
    key wins in Java properties, so every other line means exactly what it meant.
    The blank line ends a trailing backslash continuation first. Without a metrics_config
    of the user's, the package's is added: TorchServe 0.12's frontend exposes only the
    model metrics its metrics config declares (handlers/metrics.py)."""
    note = "# added by torchserve-cpu serve: the workers pin themselves"
    added = f"{text}\n\n{note}\n{ENABLE_KEY}=false\n"
    if METRICS_CONFIG_KEY not in parse_properties(text):
        added += f"# and declare their metrics\n{METRICS_CONFIG_KEY}={METRICS_CONFIG}\n"
    return added


def derived_config_path(prepared: Prepared, directory: Path) -> Path:
    """Write the config TorchServe itself is started with."""
    path = Path(directory) / "launcher-derived.properties"
    path.write_text(derived_config_text(prepared.config_path.read_text()))
    return path


def venv_bin() -> Path:
    """The bin folder of the running interpreter's environment.

    TorchServe's frontend runs a bare `python` from PATH (its launcher probe), so this
    folder must come first on PATH or workers use a different Python.
    """
    return Path(sys.executable).parent


def torchserve_env(
    prepared: Prepared, derived_config: Path, base: Mapping[str, str]
) -> dict[str, str]:
    """The frontend's environment: the user's, the launcher's additions, this venv first
    on PATH, and the derived config, which must replace a TS_CONFIG_FILE of the user's
    (it beats --ts-config in ts/model_server.py and in ConfigManager)."""
    env = {**base, **prepared.env}
    env["PATH"] = f"{venv_bin()}{os.pathsep}{base.get('PATH', '')}"
    env[CONFIG_FILE_ENV] = str(derived_config)
    if "TS_CPU_LAUNCHER_ENABLE" in env:  # with enable_envvars_config it beats the file
        env["TS_CPU_LAUNCHER_ENABLE"] = "false"
    return env


def torchserve_command(derived_config: Path, torchserve_args: Sequence[str]) -> list[str]:
    """`torchserve --start` without --foreground: its Python wrapper exits and leaves the
    Java frontend to us (see start_frontend)."""
    for implied in ("--start", "--foreground"):
        torchserve_args = [arg for arg in torchserve_args if arg != implied]
    for refused in ("--stop", "--version", "-v"):
        if refused in torchserve_args:
            raise LauncherError(f"serve runs TorchServe until SIGTERM; {refused} is for "
                                "`torchserve` itself")
    return [sys.executable, "-m", "ts.model_server", "--start",
            "--ts-config", str(derived_config), *torchserve_args]


def exit_status(wait_status: int) -> int:
    """A waitpid status as a shell reports it: the exit code, or 128+N for signal N."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def run(prepared: Prepared, torchserve_args: Sequence[str]) -> int:
    """Start TorchServe, wait until it exits or a stop signal arrives; its exit status."""
    received: list[int] = []
    previous = {signum: signal.signal(signum, lambda s, _: received.append(s))
                for signum in STOP_SIGNALS}
    wakeup_read, wakeup_write = os.pipe()
    os.set_blocking(wakeup_write, False)
    previous_wakeup = signal.set_wakeup_fd(wakeup_write)
    earlier_children = {child.pid for child in psutil.Process().children()}
    try:
        with tempfile.TemporaryDirectory(prefix="torchserve-cpu-") as private:
            derived = derived_config_path(prepared, Path(private))
            env = torchserve_env(prepared, derived, os.environ)
            frontend = start_frontend(torchserve_command(derived, torchserve_args), env)
            try:
                return wait_frontend(frontend, wakeup_read, received)
            finally:
                reap_orphans(earlier_children)
                remove_run_files(frontend)
    finally:
        signal.set_wakeup_fd(previous_wakeup)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.close(wakeup_read)
        os.close(wakeup_write)


def start_frontend(command: Sequence[str], env: Mapping[str, str]) -> int:
    """Run `torchserve --start`; the Java frontend's pid.

    The wrapper detaches the frontend and exits; as a child subreaper (prctl(2)) this
    process inherits the orphaned frontend, so it can wait for it and get its real exit
    status. Its own session keeps a terminal's Ctrl-C from reaching the frontend and
    workers directly: serve alone decides how they stop.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    sys.stdout.flush()
    wrapper = subprocess.run(list(command), env=dict(env), stdin=subprocess.DEVNULL,
                             start_new_session=True, check=False)
    if wrapper.returncode != 0:  # it printed why, e.g. "TorchServe is already running"
        raise ServeError(f"torchserve --start failed (exit {wrapper.returncode})")
    pid_file = Path(tempfile.gettempdir()) / PID_FILE  # the wrapper's TEMP is ours
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        raise ServeError(f"torchserve --start left no pid in {pid_file}: the Java frontend "
                         "did not start (see its output above)") from None
    if parent_pid(pid) != os.getpid():
        raise ServeError(f"{pid_file} names pid {pid}, which is not the frontend just started")
    log.info("TorchServe frontend pid %d; SIGTERM or Ctrl-C stops it", pid)
    return pid


def wait_frontend(pid: int, wakeup: int, received: list[int]) -> int:
    """Wait for the frontend to exit, stopping it once a stop signal is received."""
    exited = os.pidfd_open(pid)
    kill_at: float | None = None  # set when the stop begins
    try:
        while True:
            if received and kill_at is None:
                log.info("signal %d: stopping TorchServe (SIGTERM to pid %d)", received[0], pid)
                os.kill(pid, signal.SIGTERM)  # our unreaped child: the pid is still its
                kill_at = time.monotonic() + STOP_TIMEOUT_S
            timeout = None if kill_at is None else max(0.0, kill_at - time.monotonic())
            ready, _, _ = select.select([exited, wakeup], [], [], timeout)
            if wakeup in ready:
                os.read(wakeup, 64)  # a signal woke us; its handler recorded it
            if not ready:
                log.warning("TorchServe did not stop in %.0fs: SIGKILL", STOP_TIMEOUT_S)
                os.kill(pid, signal.SIGKILL)
            if exited in ready or not ready:
                status = exit_status(os.waitpid(pid, 0)[1])
                log.info("TorchServe frontend pid %d exited: status %d", pid, status)
                return status
    finally:
        os.close(exited)


def reap_orphans(earlier_children: set[int]) -> None:
    """Wait for the frontend's workers that outlived it (they are ours now: subreaper),
    killing the ones still there after ORPHAN_TIMEOUT_S."""
    deadline = time.monotonic() + ORPHAN_TIMEOUT_S
    while orphans := [c for c in psutil.Process().children() if c.pid not in earlier_children]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            for orphan in orphans:
                log.warning("pid %d outlived TorchServe: SIGKILL", orphan.pid)
                with contextlib.suppress(psutil.NoSuchProcess):
                    orphan.kill()
            psutil.wait_procs(orphans, timeout=5)
            return
        psutil.wait_procs(orphans, timeout=remaining)


def remove_run_files(frontend: int) -> None:
    """What `torchserve --stop` removes: the pid file (when still the frontend's) and the
    key file in the working directory."""
    pid_file = Path(tempfile.gettempdir()) / PID_FILE
    try:
        if pid_file.read_text().strip() == str(frontend):
            pid_file.unlink()
    except (OSError, ValueError):
        pass
    Path(KEY_FILE).unlink(missing_ok=True)


def serve_in_foreground(environ: Mapping[str, str], ts_config: Path | None,
                        model_store: Path | None, models: Sequence[str],
                        torchserve_args: Sequence[str]) -> int:
    """`torchserve-cpu serve`: find the config and store as TorchServe would, show where the
    workers will sit, then run TorchServe until it exits or is stopped; its exit status."""
    config = find_ts_config(environ, ts_config, Path.cwd())
    store = find_model_store(config, model_store)
    prepared = prepare(config, store, models)
    if prepared.plan is not None:
        print(render_plan(prepared.plan, worker_models(prepared.models)))
        print(f"allocator: {prepared.allocator.name} ({prepared.allocator.reason})")
    arguments = list(torchserve_args)
    if model_store is not None:
        arguments += ["--model-store", str(model_store)]
    if models:
        arguments += ["--models", *models]
    return run(prepared, arguments)
