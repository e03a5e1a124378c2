"""Helpers shared by the launcher's integration tests (a module, so tests can import it)."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path


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


def env_with_registry(directory: Path) -> dict[str, str]:
    return {"TSCPU_REGISTRY_DIR": str(directory), "PYTHONUNBUFFERED": "1"}
