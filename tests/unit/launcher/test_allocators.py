"""The allocator table is complete: every entry can be asked for, found, set up and seen."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from torchserve_cpu.launcher.planning.allocators import (
    ALLOCATORS,
    DEFAULT,
    FALLBACK,
    allocator_in,
    allocator_named,
)
from torchserve_cpu.launcher.planning.environment import LIBRARY_FILES, choose_allocator
from torchserve_cpu.launcher.planning.options import parse_launcher_args

SETUP = Path(__file__).resolve().parents[3] / "scripts" / "setup.sh"


@pytest.mark.parametrize("entry", ALLOCATORS, ids=lambda entry: entry.name)
def test_every_entry_is_complete(entry) -> None:
    assert entry.name and entry.flag
    assert parse_launcher_args(f"--{entry.flag}").allocator == entry.name
    assert allocator_named(entry.name) is entry
    if not entry.preloaded:  # libc's own malloc: nothing to find, link or detect
        assert entry.name == FALLBACK
        assert choose_allocator(parse_launcher_args(f"--{entry.flag}"), lambda _: None).path is None
        return
    assert entry.debian_package and entry.run_cpu_file and entry.mapped_prefix
    assert LIBRARY_FILES[entry.name] == entry.library_files
    # detection recognizes every file the launcher may preload, and run_cpu's link
    for name in (*entry.library_files, entry.run_cpu_file):
        assert allocator_in(["libc.so.6", name]) == entry.name
    found = Path("/lib") / entry.library_files[0]
    choice = choose_allocator(parse_launcher_args(f"--{entry.flag}"),
                              lambda kind: found if kind == entry.name else None)
    assert (choice.name, choice.path) == (entry.name, found)


def test_names_flags_and_prefixes_are_unique() -> None:
    for field in ("name", "flag", "mapped_prefix", "run_cpu_file"):
        values = [getattr(entry, field) for entry in ALLOCATORS if getattr(entry, field)]
        assert len(values) == len(set(values)), field


def test_default_and_fallback_are_entries() -> None:
    assert allocator_named(DEFAULT).preloaded
    assert not allocator_named(FALLBACK).preloaded
    assert allocator_in(["libc.so.6", "libtorch_cpu.so"]) == FALLBACK


def test_setup_installs_every_package() -> None:
    listed = re.search(r"APT_PACKAGES=\(([^)]*)\)", SETUP.read_text())
    assert listed is not None
    packages = set(listed.group(1).split())
    assert {entry.debian_package for entry in ALLOCATORS if entry.preloaded} <= packages


def test_an_unknown_name_is_a_key_error_listing_the_table() -> None:
    with pytest.raises(KeyError) as caught:
        allocator_named("mimalloc")
    assert caught.value.args == ("no allocator 'mimalloc'; known: jemalloc, tcmalloc, glibc",)
