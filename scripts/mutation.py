"""Mutation testing of the core modules with mutmut, outside the repo.

    bash scripts/mutation.sh [launcher|handlers ...] [--max-children 1] [--keep DIR]
                             [--out FILE] [--fail-under PCT]

Why a staging tree: mutmut 3 copies the sources into `mutants/` and names every mutant
after its file's path (`launcher/planner.py` -> `launcher.planner`), while the tests
import `torchserve_cpu.launcher.planner`, which the editable install resolves to the
checkout, not to the mutated copy. So each run builds, in a temporary folder, the layout
the import names expect: the part's folder copied to `torchserve_cpu/<part>/` (a real
package; `torchserve_cpu` stays a namespace, so the parts not staged still come from the
editable install), `tests/`, `scripts/`, and a pyproject.toml whose `[tool.mutmut]` is the
repo's narrowed to the chosen parts. mutmut puts that folder's `mutants/` first on
sys.path, and Python's PathFinder (first in sys.meta_path) finds the mutated
`torchserve_cpu/<part>` before setuptools' editable finder (appended after it) is asked.
mutmut's forced-fail check then proves the tests run the mutated copy: it makes every
trampoline raise and stops the run if no test fails.

Nothing is written in the checkout unless --out names a file there. The staging folder is
deleted afterwards unless --keep names one (then `cd DIR && mutmut show <name>` works).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from fnmatch import fnmatch
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "torchserve_cpu"
IGNORE = shutil.ignore_patterns("__pycache__", ".hypothesis", ".pytest_cache", "*.pyc")
# mutmut's exit-code meanings (mutmut.stats.status_by_exit_code), grouped as we report them
KILLED = {1, 3}
TIMEOUT = {36, 24, -24, 152, 255}
SURVIVED = {0}
NO_TESTS = {5, 33}


def repo_config() -> tuple[dict, dict[str, str]]:
    """The repo's [tool.mutmut] and its package-dir map (import path -> folder)."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return data["tool"]["mutmut"], data["tool"]["setuptools"]["package-dir"]


def parts_in(config: dict) -> list[str]:
    """The parts the config names: source_paths are torchserve_cpu/<part>."""
    return [Path(path).name for path in config["source_paths"]]


def narrowed(config: dict, parts: list[str]) -> dict:
    """The repo's config, keeping only what belongs to `parts`."""
    prefixes = tuple(f"{NAMESPACE}/{part}" for part in parts)
    tests = tuple(f"tests/unit/{part}" for part in parts)
    staged = dict(config)
    staged["source_paths"] = [p for p in config["source_paths"] if p.startswith(prefixes)]
    staged["only_mutate"] = [p for p in config["only_mutate"] if p.startswith(prefixes)]
    staged["pytest_add_cli_args_test_selection"] = [
        p for p in config["pytest_add_cli_args_test_selection"] if p.startswith(tests)
    ]
    staged["use_git_change_detection"] = False  # the staging folder is not a checkout
    return staged


def toml_section(name: str, values: dict) -> str:
    """A TOML table of strings, numbers, booleans and lists of those (JSON spells them the
    same way)."""
    lines = [f"[{name}]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def without_section(text: str, name: str) -> str:
    """pyproject text minus one top-level table (up to the next table header)."""
    out, skipping = [], False
    for line in text.splitlines(keepends=True):
        if re.match(r"^\[[^\]]+\]\s*$", line):
            skipping = line.strip() == f"[{name}]"
        if not skipping:
            out.append(line)
    return "".join(out)


def stage(root: Path, parts: list[str], config: dict, package_dir: dict[str, str]) -> None:
    """The layout mutmut and the tests expect, built from the checkout under `root`."""
    for part in parts:
        source = REPO / package_dir[f"{NAMESPACE}.{part}"]
        shutil.copytree(source, root / NAMESPACE / part, ignore=IGNORE)
    for folder in ("tests", "scripts"):  # test_allocators reads scripts/setup.sh
        shutil.copytree(REPO / folder, root / folder, ignore=IGNORE)
    text = without_section((REPO / "pyproject.toml").read_text(), "tool.mutmut")
    staged = toml_section("tool.mutmut", narrowed(config, parts))
    (root / "pyproject.toml").write_text(text.rstrip("\n") + "\n\n" + staged)


def mutmut_command() -> Path:
    command = Path(sys.executable).with_name("mutmut")
    if not command.exists():
        sys.exit(f"mutation: {command} not found; install the test extra "
                 f"({sys.executable} -m pip install -e '.[test]')")
    return command


def results(root: Path, patterns: list[str]) -> dict[str, dict[str, int | None]]:
    """Per mutated module: the mutmut exit code of each of its mutants, by mutant name."""
    found = {}
    for pattern in patterns:
        for meta in sorted((root / "mutants").glob(pattern + ".meta")):
            relative = meta.relative_to(root / "mutants").with_suffix("")
            data = json.loads(meta.read_text())
            found[str(relative)] = data["exit_code_by_key"]
    return found


def tally(codes: dict[str, int | None]) -> Counter:
    count: Counter = Counter(total=len(codes))
    for code in codes.values():
        if code in KILLED:
            count["killed"] += 1
        elif code in TIMEOUT:
            count["timeout"] += 1
        elif code in SURVIVED:
            count["survived"] += 1
        elif code in NO_TESTS:
            count["no tests"] += 1
        else:
            count["other"] += 1
    return count


def score(count: Counter) -> float:
    """Killed (timeouts count as killed, as in mutmut's badge) per mutant, in percent."""
    return 100.0 * (count["killed"] + count["timeout"]) / max(1, count["total"])


def report(root: Path, found: dict, seconds: float, parts: list[str]) -> str:
    """A Markdown table per module, then every survivor's diff."""
    columns = ("total", "killed", "timeout", "survived", "no tests", "other")
    lines = [
        f"mutmut over {', '.join(parts)}: {seconds:.0f} s",
        "",
        "| module | " + " | ".join(columns) + " | score |",
        "| --- |" + " ---: |" * (len(columns) + 1),
    ]
    for module, codes in found.items():
        count = tally(codes)
        cells = " | ".join(str(count[c]) for c in columns)
        lines.append(f"| `{module}` | {cells} | {score(count):.1f}% |")
    timeouts = [name for codes in found.values() for name, code in codes.items()
                if code in TIMEOUT]
    if timeouts:
        lines += ["", "Timed out (counted as killed): " + ", ".join(f"`{n}`" for n in timeouts)]
    survivors = [
        name for codes in found.values() for name, code in codes.items()
        if code not in KILLED and code not in TIMEOUT
    ]
    if survivors:
        lines += ["", "Not killed:", ""]
    for name in survivors:
        shown = subprocess.run([str(mutmut_command()), "show", name], cwd=root,
                               capture_output=True, text=True, check=False)
        lines += ["```diff", shown.stdout.strip(), "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    config, package_dir = repo_config()
    known = parts_in(config)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="*", metavar="part",
                        help=f"what to mutate (default: launcher; known: {', '.join(known)})")
    parser.add_argument("--max-children", type=int, default=1,
                        help="parallel mutant runs (default 1: the machine is shared)")
    parser.add_argument("--keep", type=Path, help="stage here and keep it (must not exist)")
    parser.add_argument("--out", type=Path, help="also write the summary to this file")
    parser.add_argument("--fail-under", type=float, default=0.0,
                        help="exit 1 when a module scores below this percentage")
    args = parser.parse_args(argv)
    parts = args.parts or ["launcher"]
    unknown = sorted(set(parts) - set(known))
    if unknown:
        parser.error(f"unknown part {', '.join(unknown)}; known: {', '.join(known)}")
    if args.keep is not None:
        if args.keep.exists():
            parser.error(f"--keep {args.keep}: already exists")
        args.keep.mkdir(parents=True)
        root = args.keep.resolve()
    else:
        root = Path(tempfile.mkdtemp(prefix="tscpu-mutation-"))
    try:
        stage(root, parts, config, package_dir)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        started = time.monotonic()
        run = subprocess.run(
            [str(mutmut_command()), "run", "--max-children", str(args.max_children)],
            cwd=root, env=env, check=False,
        )
        seconds = time.monotonic() - started
        if run.returncode != 0:
            print(f"mutation: mutmut run failed ({run.returncode}); --keep DIR keeps the "
                  "staging folder to look into", file=sys.stderr)
            return run.returncode
        patterns = narrowed(config, parts)["only_mutate"]
        found = results(root, patterns)
        summary = report(root, found, seconds, parts)
        print(summary)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(summary)
        # A module with no mutant killed was not tested at all (say, the tests imported the
        # checkout's copy); a pattern with no module is a stale entry in [tool.mutmut].
        missed = [m for m, codes in found.items() if score(tally(codes)) == 0.0]
        missed += [p for p in patterns if not any(fnmatch(m, p) for m in found)]
        if missed:
            print(f"mutation: nothing killed in {', '.join(missed)}", file=sys.stderr)
            return 1
        low = [m for m, codes in found.items() if score(tally(codes)) < args.fail_under]
        if low:
            print(f"mutation: below {args.fail_under}%: {', '.join(low)}", file=sys.stderr)
            return 1
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
