"""Archive-time compile for the model store: AOTInductor packages as extra files.

`build_archive` asks this module for the packages of an archive whose model-config says
`handler: optimize: aot` (or `pt2: export: aot_compile: true`); they are compiled by
handlers.aot_build from the very files that go into the archive, and cached next to the
weights (`$TSCPU_CACHE_DIR/aot/<model>-<dtype>-torch<version>-<key>/`), keyed by model
file, weights, the settings that shape the package, the torch build and the CPU's flags:
building the same archive again costs a copy, not a 15-40 s compile.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path


def wants_aot(config: Mapping[str, object]) -> bool:
    """The config serves the aot backend (then the archive needs its packages)."""
    from torchserve_cpu.handlers.model_config import settings_from_config

    return settings_from_config(config).optimize == "aot"


def aot_files(name: str, model_file: Path, weights: Path, extra_files: Sequence[Path],
              config: Mapping[str, object], out_dir: Path, cache_dir: Path) -> list[Path]:
    """`aot-<dtype>.pt2` + `.json` for the archive in `out_dir` ([] when not wanted)."""
    if not wants_aot(config):
        return []
    from torchserve_cpu.handlers.archive import build_packages, staged_archive

    with tempfile.TemporaryDirectory() as staging:
        manifest = staged_archive(model_file, weights, extra_files, Path(staging))
        built = build_packages(Path(staging), manifest, config, out_dir, cache_dir, name)
    for one in built:
        state = f"refused: {one.record.refused}" if one.record.refused else "checked"
        print(f"aot {name} {one.record.dtype}: {'cached' if one.cached else 'compiled'}, "
              f"{state}")
    return [path for one in built for path in one.files]
