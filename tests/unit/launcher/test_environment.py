from __future__ import annotations

from pathlib import Path

import pytest

from torchserve_cpu.launcher.errors import LauncherError
from torchserve_cpu.launcher.planning.allocators import JEMALLOC_MALLOC_CONF
from torchserve_cpu.launcher.planning.environment import (
    LIBRARY_DIRS,
    arm_env,
    choose_allocator,
    find_library,
    late_env,
    link_allocators,
    process_env,
    run_cpu_link_dir,
    worker_env,
)
from torchserve_cpu.launcher.planning.options import parse_launcher_args

LIBS = {
    "tcmalloc": Path("/lib/libtcmalloc.so.4"),
    "jemalloc": Path("/lib/libjemalloc.so.2"),
    "iomp": Path("/venv/lib/libiomp5.so"),
}


def only(*kinds: str):
    return lambda kind: LIBS[kind] if kind in kinds else None


def test_default_is_tcmalloc_when_installed() -> None:
    choice = choose_allocator(parse_launcher_args(""), only("tcmalloc"))
    assert (choice.name, choice.path) == ("tcmalloc", LIBS["tcmalloc"])


def test_default_falls_back_to_glibc_and_says_why() -> None:
    choice = choose_allocator(parse_launcher_args(""), only())
    assert choice.name == "glibc" and "not installed" in choice.reason


def test_asked_for_but_missing_names_the_flag() -> None:
    with pytest.raises(LauncherError, match="--enable_jemalloc.*libjemalloc2"):
        choose_allocator(parse_launcher_args("--enable_jemalloc"), only("tcmalloc"))


def test_jemalloc_env_keeps_pages_and_existing_preloads() -> None:
    options = parse_launcher_args("--enable_jemalloc")
    choice = choose_allocator(options, only("jemalloc"))
    env = process_env(options, choice, {"LD_PRELOAD": "/x.so"}, only("jemalloc"), "x86_64")
    assert env["LD_PRELOAD"] == "/lib/libjemalloc.so.2:/x.so"
    assert env["MALLOC_CONF"] == JEMALLOC_MALLOC_CONF
    assert "oversize_threshold:1" not in JEMALLOC_MALLOC_CONF
    assert env["THP_MEM_ALLOC_ENABLE"] == "1"
    assert "KMP_AFFINITY" not in env


def test_iomp_is_preloaded_with_kmp_settings_unless_disabled() -> None:
    options = parse_launcher_args("")
    choice = choose_allocator(options, only("tcmalloc", "iomp"))
    env = process_env(options, choice, {}, only("tcmalloc", "iomp"), "x86_64")
    assert env["LD_PRELOAD"].endswith("libiomp5.so") and env["KMP_BLOCKTIME"] == "1"
    off = parse_launcher_args("--disable_iomp")
    assert "KMP_BLOCKTIME" not in process_env(off, choice, {}, only("tcmalloc", "iomp"), "x86_64")


def test_arm_presets_with_opt_in_bf16() -> None:
    glibc = choose_allocator(parse_launcher_args("--use_default_allocator"), only())
    plain = process_env(parse_launcher_args(""), glibc, {}, only(), "aarch64")
    assert plain["TORCH_MKLDNN_MATMUL_MIN_DIM"] == "1024"
    assert "DNNL_DEFAULT_FPMATH_MODE" not in plain and "LD_PRELOAD" not in plain
    bf16 = process_env(parse_launcher_args("--enable_bf16_fpmath"), glibc, {}, only(), "aarch64")
    assert bf16["DNNL_DEFAULT_FPMATH_MODE"] == "BF16"


def test_worker_env() -> None:
    assert worker_env(3, iomp_loaded=False) == {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3"}
    assert worker_env(3, iomp_loaded=True)["KMP_AFFINITY"].startswith("granularity")


def test_late_env_is_what_process_env_sets_that_a_worker_can_still_set() -> None:
    options = parse_launcher_args("--enable_bf16_fpmath")
    assert late_env(options, machine="x86_64") == {"THP_MEM_ALLOC_ENABLE": "1"}
    arm = late_env(options, machine="aarch64")
    assert arm["DNNL_DEFAULT_FPMATH_MODE"] == "BF16" and arm["TORCH_MKLDNN_MATMUL_MIN_DIM"]


def test_run_cpu_link_dir_follows_run_cpus_search() -> None:
    assert run_cpu_link_dir({"VIRTUAL_ENV": "/v", "HOME": "/h"}) == Path("/v/lib")
    assert run_cpu_link_dir({"HOME": "/h"}) == Path("/h/.local/lib")


def test_link_allocators_makes_the_unversioned_names_run_cpu_wants(tmp_path: Path) -> None:
    installed = tmp_path / "multiarch"
    installed.mkdir()
    (installed / "libtcmalloc.so.4").write_bytes(b"")
    found = {"tcmalloc": installed / "libtcmalloc.so.4", "jemalloc": None}
    links = tmp_path / "links"
    done = link_allocators(links, find=found.get)
    assert (links / "libtcmalloc.so").resolve() == installed / "libtcmalloc.so.4"
    assert not (links / "libjemalloc.so").exists()
    assert any("libjemalloc.so: jemalloc not installed" in line for line in done)
    assert any("already there" in line for line in link_allocators(links, find=found.get))


def test_debian_paths_on_this_machine() -> None:
    """The Debian packages installed here are found where run_cpu never looks."""
    assert find_library("jemalloc") == Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert find_library("tcmalloc") == Path("/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4")


@pytest.mark.parametrize(
    ("args", "installed", "expected"),
    [
        ("", ("tcmalloc",), ("tcmalloc", LIBS["tcmalloc"], "default (measured fastest)")),
        ("", (), ("glibc", None, "default tcmalloc is not installed: using glibc")),
        ("--enable_jemalloc", ("jemalloc",), ("jemalloc", LIBS["jemalloc"], "--enable_jemalloc")),
        ("--use_default_allocator", ("tcmalloc",), ("glibc", None, "--use_default_allocator")),
    ],
)
def test_the_choice_says_why(args: str, installed: tuple[str, ...], expected: tuple) -> None:
    """The reason is what the ready line and `doctor` print."""
    choice = choose_allocator(parse_launcher_args(args), only(*installed))
    assert (choice.name, choice.path, choice.reason) == expected


def test_a_missing_allocator_names_files_folders_and_package() -> None:
    with pytest.raises(LauncherError) as caught:
        choose_allocator(parse_launcher_args("--enable_tcmalloc"), only())
    assert str(caught.value) == (
        "--enable_tcmalloc: tcmalloc (libtcmalloc.so.4, libtcmalloc_minimal.so.4, "
        f"libtcmalloc.so) not found in {', '.join(map(str, LIBRARY_DIRS))}; install it "
        "(Debian: libgoogle-perftools4)"
    )


def test_preloads_already_set_are_kept_once_and_in_order() -> None:
    options = parse_launcher_args("")
    choice = choose_allocator(options, only("tcmalloc"))
    base = {"LD_PRELOAD": "/a.so:/lib/libtcmalloc.so.4::/b.so"}
    env = process_env(options, choice, base, only("tcmalloc"), "x86_64")
    assert env["LD_PRELOAD"] == "/lib/libtcmalloc.so.4:/a.so:/b.so"


@pytest.mark.parametrize("machine", ["aarch64", "arm64"])  # Linux and macOS names
def test_arm_presets_by_machine_name(machine: str) -> None:
    options = parse_launcher_args("")
    assert late_env(options, machine) == {"THP_MEM_ALLOC_ENABLE": "1", **arm_env(options)}
    assert arm_env(options) == {"TORCH_MKLDNN_MATMUL_MIN_DIM": "1024",
                                "LRU_CACHE_CAPACITY": "1024"}


def test_run_cpu_link_dir_without_home_is_the_users_home() -> None:
    assert run_cpu_link_dir({}) == Path.home() / ".local" / "lib"


def test_link_allocators_goes_on_past_a_link_or_file_already_there(tmp_path: Path) -> None:
    installed = {
        "jemalloc": tmp_path / "libjemalloc.so.2",
        "tcmalloc": tmp_path / "libtcmalloc.so.4",
    }
    for path in installed.values():
        path.write_bytes(b"")
    links = tmp_path / "venv" / "lib"  # parents are made
    links.mkdir(parents=True)  # and an existing folder is fine
    (links / "libjemalloc.so").symlink_to(installed["jemalloc"])
    assert link_allocators(links, find=installed.get) == [
        f"{links / 'libjemalloc.so'} -> {installed['jemalloc']} (already there)",
        f"{links / 'libtcmalloc.so'} -> {installed['tcmalloc']}",
    ]
    real = tmp_path / "other" / "deeper" / "lib"
    assert link_allocators(real, find=installed.get)[1] == (
        f"{real / 'libtcmalloc.so'} -> {installed['tcmalloc']}"
    )
    (real / "libjemalloc.so").unlink()
    (real / "libjemalloc.so").write_bytes(b"a user's own build")
    (real / "libtcmalloc.so").unlink()
    assert link_allocators(real, find=installed.get) == [
        f"{real / 'libjemalloc.so'}: a real file is already there, left alone",
        f"{real / 'libtcmalloc.so'} -> {installed['tcmalloc']}",
    ]
