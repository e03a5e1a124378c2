from __future__ import annotations

import pytest

from torchserve_cpu.launcher.errors import LauncherError
from torchserve_cpu.launcher.planning.options import (
    BOOL_FLAGS,
    LauncherOptions,
    parse_launcher_args,
)


def test_empty_args_are_defaults() -> None:
    assert parse_launcher_args("") == LauncherOptions()
    assert parse_launcher_args(None) == LauncherOptions()


@pytest.mark.parametrize("spelling", ["--use_logical_core", "--use-logical-core"])
def test_dash_and_underscore_spellings(spelling: str) -> None:
    assert parse_launcher_args(spelling).use_logical_core


@pytest.mark.parametrize(
    ("text", "field", "value"),
    [
        ("--node_id 13", "node_id", 13),
        ("--node-id=0", "node_id", 0),
        ("--ninstances 4", "ninstances", 4),
        ("--ncores-per-instance=14", "ncores_per_instance", 14),
        ("--core_list 0-3,8", "core_list", (0, 1, 2, 3, 8)),
        ("--core-list=5", "core_list", (5,)),
        ("--skip_cross_node_cores", "skip_cross_node_cores", True),
        ("--enable_jemalloc", "allocator", "jemalloc"),
        ("--enable-tcmalloc", "allocator", "tcmalloc"),
        ("--use_default_allocator", "allocator", "glibc"),
        ("--disable_numactl", "bind_memory", False),
        ("--disable_numactl", "bind_cpus", True),
        ("--disable_taskset", "bind_cpus", True),
        ("--disable_numactl --disable_taskset", "bind_cpus", False),
        ("--disable_iomp", "use_iomp", False),
        ("--latency_mode", "mode", "latency"),
        ("--throughput-mode", "mode", "throughput"),
        ("--enable_bf16_fpmath", "bf16_fpmath", True),
        ("--log_path /tmp/x --log_file_prefix run", "allocator", None),
    ],
)
def test_every_flag(text: str, field: str, value: object) -> None:
    assert getattr(parse_launcher_args(text), field) == value


def test_every_bool_flag_parses() -> None:
    for flag in BOOL_FLAGS:
        if flag not in ("throughput_mode",):
            parse_launcher_args(f"--{flag}")


def test_args_text_is_kept() -> None:
    assert parse_launcher_args("  --enable_jemalloc ").args == "--enable_jemalloc"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("--use_physical_core", "--use_physical_core"),
        ("--enable_jemalloc --enable_tcmalloc", "--enable_jemalloc and --enable_tcmalloc"),
        ("--use_default_allocator --enable-jemalloc", "--enable_jemalloc and --use_default"),
        ("--latency_mode --throughput_mode", "--latency_mode and --throughput_mode"),
        ("--latency_mode --ninstances 2", "--latency_mode and --ninstances"),
        ("--throughput_mode --ncores_per_instance 2", "--throughput_mode and --ncores_per"),
        ("--node_id 0 --core_list 0-3", "--node_id and --core_list"),
        ("--ninstances", "--ninstances needs a value"),
        ("--ninstances --use_logical_core", "--ninstances needs a value"),
        ("--ninstances two", "--ninstances needs an integer"),
        ("--ninstances 0", "--ninstances must be >= 1"),
        ("--ncores_per_instance -1", "--ncores_per_instance must be >= 1"),
        ("--node_id -1", "--node_id must be >= 0"),
        ("--use_logical_core=1", "--use_logical_core takes no value"),
        ("ninstances", "'ninstances'"),
        ("--core_list '0-3", "cannot split"),
    ],
)
def test_errors_name_the_flag(text: str, named: str) -> None:
    with pytest.raises(LauncherError, match=named.replace("-", "[-_]")):
        parse_launcher_args(text)


def test_launcher_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_launcher_args("--bogus")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("--rank 0", "--rank: workers claim their block from the registry; remove --rank"),
        ("--rank=3", "--rank: workers claim their block from the registry; remove --rank"),
        ("--no_python", "--no_python: the launcher pins TorchServe workers in-process; "
                        "remove --no_python"),
        ("--no-python", "--no_python: the launcher pins TorchServe workers in-process; "
                        "remove --no_python"),
        ("--module", "--module: the launcher pins TorchServe workers in-process; remove --module"),
    ],
)
def test_flags_torchserve_appends_are_rejected_saying_why(text: str, message: str) -> None:
    """Not "unknown flag": run_cpu knows them, so the message says why they cannot work."""
    with pytest.raises(LauncherError) as caught:
        parse_launcher_args(f"--ninstances 2 {text}")
    assert str(caught.value) == f"cpu_launcher_args: {message}"


def test_unknown_flag_lists_every_known_flag() -> None:
    with pytest.raises(LauncherError) as caught:
        parse_launcher_args("--bogus")
    known = caught.value.args[0].partition("; known: ")[2].split(" ")
    assert known[:3] == ["--use_logical_core", "--skip_cross_node_cores", "--enable_jemalloc"]
    assert "--oversubscribe" in known and "--core_list" in known


@pytest.mark.parametrize(
    ("text", "value"),
    [("", "share"), ("--oversubscribe share", "share"), ("--oversubscribe=refuse", "refuse")],
)
def test_oversubscribe(text: str, value: str) -> None:
    assert parse_launcher_args(text).oversubscribe == value


def test_oversubscribe_other_values_name_the_choices() -> None:
    with pytest.raises(LauncherError) as caught:
        parse_launcher_args("--oversubscribe never")
    assert str(caught.value) == (
        "cpu_launcher_args: --oversubscribe 'never'; use one of share, refuse"
    )


def test_core_list_allows_spaces_around_separators_only() -> None:
    assert parse_launcher_args("--core_list '0, 2 - 3'").core_list == (0, 2, 3)
    with pytest.raises(LauncherError, match=r"^--core_list: '1 2' is not a cpulist"):
        parse_launcher_args("--core_list '1 2'")  # was silently CPU 12


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("--core_list 3-1", "--core_list: '3-1' is not a cpulist like 0-3,8"),
        ("--core_list a", "--core_list: 'a' is not a cpulist like 0-3,8"),
        ("--core_list ''", "cpu_launcher_args: --core_list is empty"),
        ("--core_list=,", "cpu_launcher_args: --core_list is empty"),
    ],
)
def test_bad_core_lists(text: str, message: str) -> None:
    with pytest.raises(LauncherError) as caught:
        parse_launcher_args(text)
    assert str(caught.value) == message
