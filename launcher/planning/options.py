"""Parse `cpu_launcher_args` (run_cpu / TorchServe vocabulary) into one frozen object.

Options flow one way: config.properties or CLI -> LauncherOptions -> planner ->
environment. Both spellings are accepted (`--node_id`, `--node-id`, `--node-id=1`).
An unknown or contradictory flag raises LauncherError naming it, instead of being
silently ignored as TorchServe does when its launcher probe fails.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Literal

from torchserve_cpu.launcher.errors import LauncherError
from torchserve_cpu.launcher.host import parse_cpulist
from torchserve_cpu.launcher.planning.allocators import ALLOCATORS

Mode = Literal["latency", "throughput"]
Oversubscribe = Literal["share", "refuse"]

ALLOCATOR_FLAGS = tuple(entry.flag for entry in ALLOCATORS)
BOOL_FLAGS = (
    "use_logical_core",
    "skip_cross_node_cores",
    *ALLOCATOR_FLAGS,
    "disable_numactl",
    "disable_taskset",
    "disable_iomp",
    "latency_mode",
    "throughput_mode",
    "enable_bf16_fpmath",  # ours: opt-in for the Arm (Graviton) BF16 fast-math preset
)
INT_FLAGS = ("node_id", "ninstances", "ncores_per_instance")
# ours: what a worker gets when live workers outnumber the core blocks
CHOICE_FLAGS: dict[str, tuple[str, ...]] = {"oversubscribe": ("share", "refuse")}
# run_cpu's own logging flags: meaningless without run_cpu, accepted so existing
# configs keep working.
IGNORED_VALUE_FLAGS = ("log_path", "log_file_prefix")
VALUE_FLAGS = (*INT_FLAGS, "core_list", *CHOICE_FLAGS, *IGNORED_VALUE_FLAGS)
# Flags TorchServe itself appends per worker; in cpu_launcher_args they would fight the
# registry, which assigns blocks.
REJECTED = {
    "rank": "workers claim their block from the registry; remove --rank",
    "no_python": "the launcher pins TorchServe workers in-process; remove --no_python",
    "module": "the launcher pins TorchServe workers in-process; remove --module",
}


@dataclass(frozen=True)
class LauncherOptions:
    """What the user asked of the launcher; None means "not set, decide from facts"."""

    use_logical_core: bool = False
    node_id: int | None = None
    ninstances: int | None = None
    ncores_per_instance: int | None = None
    core_list: tuple[int, ...] | None = None
    skip_cross_node_cores: bool = False
    allocator: str | None = None  # an allocators.ALLOCATORS name; None: the default if installed
    bind_memory: bool = True  # set_mempolicy to the block's node (run_cpu: numactl -m)
    bind_cpus: bool = True  # sched_setaffinity to the block (off only with both disables)
    use_iomp: bool = True  # preload Intel OpenMP when it is installed
    mode: Mode | None = None
    bf16_fpmath: bool = False
    # share: extra workers share the least-loaded blocks, threads divided, with a warning;
    # refuse: the extra worker fails to start with a message naming the counts
    oversubscribe: Oversubscribe = "share"
    args: str = ""  # the text they came from, for messages and the plan hash


def parse_launcher_args(text: str | None) -> LauncherOptions:
    """LauncherOptions from a cpu_launcher_args string."""
    text = (text or "").strip()
    try:
        tokens = shlex.split(text)
    except ValueError as error:
        raise LauncherError(f"cpu_launcher_args: cannot split {text!r}: {error}") from None
    seen: dict[str, str | bool] = {}
    position = 0
    while position < len(tokens):
        token = tokens[position]
        position += 1
        if not token.startswith("--"):
            raise LauncherError(f"cpu_launcher_args: unexpected {token!r}; flags start with --")
        name, has_value, value = token[2:].partition("=")
        name = name.replace("-", "_")
        if name in REJECTED:
            raise LauncherError(f"cpu_launcher_args: --{name}: {REJECTED[name]}")
        if name in BOOL_FLAGS:
            if has_value:
                raise LauncherError(f"cpu_launcher_args: --{name} takes no value, got {token!r}")
            seen[name] = True
        elif name in VALUE_FLAGS:
            if not has_value:
                if position >= len(tokens) or tokens[position].startswith("--"):
                    raise LauncherError(f"cpu_launcher_args: --{name} needs a value")
                value = tokens[position]
                position += 1
            seen[name] = value
        else:
            raise LauncherError(
                f"cpu_launcher_args: unknown flag --{name}; known: "
                + " ".join(f"--{flag}" for flag in (*BOOL_FLAGS, *VALUE_FLAGS))
            )
    return _build(seen, text)


def _build(seen: dict[str, str | bool], text: str) -> LauncherOptions:
    ints = {name: _positive_int(name, str(seen[name])) for name in INT_FLAGS if name in seen}
    _exclusive(seen, ALLOCATOR_FLAGS)
    _exclusive(seen, ("latency_mode", "throughput_mode"))
    _exclusive(seen, ("node_id", "core_list"))
    for mode in ("latency_mode", "throughput_mode"):
        if mode in seen:
            for sizing in ("ninstances", "ncores_per_instance"):
                if sizing in seen:
                    raise LauncherError(
                        f"cpu_launcher_args: --{mode} and --{sizing} both size the blocks; use one"
                    )
    allocator = next((entry.name for entry in ALLOCATORS if entry.flag in seen), None)
    mode: Mode | None = None
    if "latency_mode" in seen:
        mode = "latency"
    elif "throughput_mode" in seen:
        mode = "throughput"
    core_list = None
    if "core_list" in seen:
        # parse_cpulist allows spaces around "," and "-" but not between ids: deleting
        # them made "--core_list '1 2'" CPU 12 (found by mutation testing)
        core_list = parse_cpulist(str(seen["core_list"]), "--core_list")
        if not core_list:
            raise LauncherError("cpu_launcher_args: --core_list is empty")
    disable_numactl = "disable_numactl" in seen
    for name, choices in CHOICE_FLAGS.items():
        if name in seen and seen[name] not in choices:
            raise LauncherError(
                f"cpu_launcher_args: --{name} {seen[name]!r}; use one of {', '.join(choices)}"
            )
    return LauncherOptions(
        use_logical_core="use_logical_core" in seen,
        node_id=ints.get("node_id"),
        ninstances=ints.get("ninstances"),
        ncores_per_instance=ints.get("ncores_per_instance"),
        core_list=core_list,
        skip_cross_node_cores="skip_cross_node_cores" in seen,
        allocator=allocator,
        bind_memory=not disable_numactl,
        bind_cpus=not (disable_numactl and "disable_taskset" in seen),
        use_iomp="disable_iomp" not in seen,
        mode=mode,
        bf16_fpmath="enable_bf16_fpmath" in seen,
        oversubscribe="refuse" if seen.get("oversubscribe") == "refuse" else "share",
        args=text,
    )


def _positive_int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise LauncherError(
            f"cpu_launcher_args: --{name} needs an integer, got {value!r}"
        ) from None
    least = 0 if name == "node_id" else 1  # node ids start at 0, counts at 1
    if number < least:
        raise LauncherError(f"cpu_launcher_args: --{name} must be >= {least}, got {number}")
    return number


def _exclusive(seen: dict[str, str | bool], names: tuple[str, ...]) -> None:
    given = [f"--{name}" for name in names if name in seen]
    if len(given) > 1:
        raise LauncherError(f"cpu_launcher_args: {' and '.join(given)} contradict; use one")
