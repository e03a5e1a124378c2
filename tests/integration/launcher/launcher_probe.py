"""Helpers shared by the launcher's integration tests (a module, so tests can import it)."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from torchserve_cpu.launcher.doctor import inspect
from torchserve_cpu.launcher.torchserve.registry import read_entries

if TYPE_CHECKING:
    from benchmarks.loopback_torchserve import TorchServe


def write_config(directory: Path, **properties: str) -> Path:
    path = directory / "config.properties"
    lines = {"disable_token_authorization": "true", "load_models": "probe.mar", **properties}
    path.write_text("".join(f"{key}={value}\n" for key, value in lines.items()))
    return path


def ask(server, model: str = "probe") -> dict:
    request = urllib.request.Request(f"{server.inference_url}/predictions/{model}", data=b"x")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except TimeoutError as error:  # say where the workers wait, for a hang seen once in CI
        workers = server.worker_pids(model)
        raise AssertionError(f"no answer from {model} in 30 s; its workers:\n"
                             + "\n".join(where_waiting(pid) for pid in workers)) from error


def where_waiting(pid: int) -> str:
    """Each thread of `pid`: name, state and the kernel function it sleeps in (wchan), plus
    its kernel stack when readable (root): a stdout pipe TorchServe stopped reading shows as
    pipe_write, a lock held in-process as futex_wait."""
    lines = [f"pid {pid}:"]
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        def read(name: str, task: Path = task) -> str:
            try:
                return (task / name).read_text().strip()
            except OSError:
                return "?"
        state = (read("stat").rsplit(")", 1)[-1].split() or ["?"])[0]
        lines.append(f"  {task.name} {read('comm')} {state} wchan={read('wchan')} "
                     f"stack={read('stack').replace(chr(10), ' | ')[:400]}")
    return "\n".join(lines)


def allowed_list(pid: int) -> set[int]:
    from torchserve_cpu.launcher.host.procfs import allowed_cpus

    return set(allowed_cpus(pid))


class NotYet:
    """A falsy answer to wait_for that says what is still missing (shown on timeout)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"NotYet({self.reason})"


def wait_for(condition, timeout: float = 120.0, step: float = 0.5):
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    last = f"; last: {value.reason}" if isinstance(value, NotYet) else ""
    raise AssertionError(f"condition not met in {timeout}s{last}")


def settled(server: TorchServe, registry: Path, workers: dict[str, int]) -> list[int] | NotYet:
    """Pids when every model has its READY workers, each on its own cores with threads =
    cores applied, the registry holds exactly them and doctor finds nothing; else what is
    still missing."""
    pids: list[int] = []
    for model, count in workers.items():
        ready = server.worker_pids(model)
        if len(ready) != count:
            return NotYet(f"{model}: READY workers {ready}, want {count}")
        for _ in range(4 * count):  # requests reach every worker: each applies its seat
            ask(server, model)
        pids += ready
    entries = {e.pid: e for e in read_entries(registry)}
    if set(entries) != set(pids):  # a dead worker not yet swept, or a live one not joined
        return NotYet(f"registry holds {sorted(entries)}, READY workers are {sorted(pids)}")
    for e in entries.values():
        if e.applied_threads != e.threads or set(e.cpus) != allowed_list(e.pid):
            return NotYet(f"worker {e.pid}: seat {e.cpus} threads {e.threads}, applied "
                          f"{e.applied_threads} threads on {sorted(allowed_list(e.pid))}")
    report = inspect(entries=tuple(entries.values()), frontend=server.pid)
    if {w.pid for w in report.workers} != set(pids):  # one starting or stopping, no seat yet
        return NotYet(f"doctor sees workers {sorted(w.pid for w in report.workers)}")
    return pids if not report.problems else NotYet(f"doctor: {report.problems}")


def env_with_registry(directory: Path) -> dict[str, str]:
    return {"TSCPU_REGISTRY_DIR": str(directory), "PYTHONUNBUFFERED": "1"}
