"""Every documented cpu_launcher_args flag through plain `torchserve --start`.

There TorchServe wraps each worker in `python -m torch.backends.xeon.run_cpu <args>
--ninstances <minWorkers> --rank <n>` (when run_cpu accepts the args; else it starts the
worker bare), so run_cpu sees the user's flags first and pins the worker its own way;
the worker then re-pins itself to its registry seat. Whatever run_cpu did, the result
must be the plan `launcher.balance` makes for the same args (what `launcher serve`
gives), with threads = cores of the seat. Half the flags use the dash spelling.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.loopback_torchserve import start
from tests.integration.launcher.launcher_probe import (
    allowed_list,
    ask,
    env_with_registry,
    settled,
    wait_for,
    write_config,
)
from torchserve_cpu.launcher.host.sysfs import read_topology
from torchserve_cpu.launcher.planning.balance import Demand, Pool, assign
from torchserve_cpu.launcher.planning.options import parse_launcher_args
from torchserve_cpu.launcher.torchserve.registry import read_entries

FLAGS = [
    "",
    "--use_logical_core",
    "--node-id 0",
    "--ninstances 2",
    "--ncores-per-instance 1",
    "--core_list 0,1",
    "--skip-cross-node-cores",
    "--enable_tcmalloc",
    "--enable-jemalloc",
    "--use_default_allocator",
    "--disable-numactl",
    "--disable_numactl --disable_taskset",
    "--disable-iomp",
    # run_cpu's modes ignore the --ninstances/--rank TorchServe appends and start
    # several copies of the worker; any flag run_cpu does not know (ours) makes
    # TorchServe start workers without run_cpu, and the launcher alone pins them
    "--latency_mode --oversubscribe share",
    "--throughput-mode",
    "--enable_bf16_fpmath",
    "--oversubscribe refuse",
]


def expected_cpus(args: str, workers: int) -> list[tuple[int, ...]]:
    machine = read_topology()
    pool = Pool(machine.cpu_ids, None, args)
    demands = [Demand((i, 0), "probe", pool, i) for i in range(workers)]
    return sorted(seat.block.cpus for seat in assign(machine, demands).seats.values())


@pytest.fixture(scope="module")
def run_cpu_links(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A $VIRTUAL_ENV whose lib/ has the links `launcher link-allocators` makes, as the
    README's plain-torchserve set-up does: run_cpu then preloads what was asked for."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "torchserve_cpu.launcher", "link-allocators"], check=True,
                   env={**os.environ, "VIRTUAL_ENV": str(venv)}, timeout=60)
    return {"VIRTUAL_ENV": str(venv)}


@pytest.mark.parametrize("args", FLAGS)
def test_flag_through_plain_torchserve_matches_the_plan(
    args: str, probe_store: Path, tmp_path: Path, registry_dir: Path,
    run_cpu_links: dict[str, str],
) -> None:
    options = parse_launcher_args(args)
    workers = 1 if options.mode == "throughput" else 2  # one block per node here
    config = write_config(tmp_path, cpu_launcher_enable="true", cpu_launcher_args=args,
                          default_workers_per_model=str(workers))
    handle = start(config, probe_store, env={**env_with_registry(registry_dir), **run_cpu_links},
                   run_dir=tmp_path / "run")
    try:
        handle.wait_ready(["probe"], timeout=180)
        pids = handle.worker_pids("probe")
        assert len(pids) == workers
        if options.bind_cpus:  # ask and read the seats once each worker has re-pinned
            wait_for(lambda: settled(handle, registry_dir, {"probe": workers}), timeout=120)
        answers = {}
        for _ in range(20 * workers):
            answer = ask(handle)
            answers[answer["pid"]] = answer
            if len(answers) == workers:
                break
        if options.bind_cpus:
            seats = sorted(tuple(sorted(allowed_list(pid))) for pid in pids)
            assert seats == expected_cpus(args, workers), args
        entries = {e.pid: e for e in read_entries(registry_dir)}
        for pid, answer in answers.items():
            assert answer["threads"] == entries[pid].threads == len(entries[pid].cpus)
            if options.allocator:
                assert answer["allocator"] == options.allocator
        log = (handle.log_dir / "model_log.log").read_text()
        assert "Traceback" not in log, log[-3000:]
    finally:
        handle.stop()


def test_run_cpu_wrapped_workers_find_tcmalloc_through_the_link(
    probe_store: Path, tmp_path: Path, registry_dir: Path
) -> None:
    """`torchserve-cpu link-allocators` links lib{tc,je}malloc.so where run_cpu looks
    ($VIRTUAL_ENV/lib): a plain `torchserve --start` worker's allocator is then tcmalloc,
    the same as under `launcher serve`."""
    config = write_config(tmp_path, cpu_launcher_enable="true", default_workers_per_model="1")
    links = tmp_path / "venv"
    env = {**env_with_registry(registry_dir), "VIRTUAL_ENV": str(links)}
    subprocess.run([sys.executable, "-m", "torchserve_cpu.launcher", "link-allocators"], check=True,
                   env={**os.environ, **env}, timeout=60)
    assert (links / "lib" / "libtcmalloc.so").is_symlink()
    handle = start(config, probe_store, env=env, run_dir=tmp_path / "run")
    try:
        handle.wait_ready(["probe"], timeout=180)
        answer = ask(handle)
        assert answer["allocator"] == "tcmalloc", answer
        assert "wanted" not in answer["placement"]
    finally:
        handle.stop()
