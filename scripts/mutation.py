"""Mutation testing of the core modules with mutmut, outside the repo.

    bash scripts/mutation.sh [launcher|handlers ...] [--max-children 1] [--keep DIR]
                             [--out FILE] [--fail-under PCT] [--only MODULE ...]
                             [--commit REV]

Why a staging tree: mutmut 3 copies the sources into `mutants/` and names every mutant
after its file's path (`launcher/planning/planner.py` ->
`launcher.planning.planner`), while the tests import
`torchserve_cpu.launcher.planning.planner`, which the editable install resolves to the
checkout, not to the mutated copy. So each run builds, in a temporary folder, the layout
the import names expect: the part's folder copied to `torchserve_cpu/<part>/` (a real
package; `torchserve_cpu` stays a namespace, so the parts not staged still come from the
editable install), `tests/`, `scripts/`, and a pyproject.toml whose `[tool.mutmut]` is the
repo's narrowed to the chosen parts. mutmut puts that folder's `mutants/` first on
sys.path, and Python's PathFinder (first in sys.meta_path) finds the mutated
`torchserve_cpu/<part>` before setuptools' editable finder (appended after it) is asked.
mutmut's forced-fail check then proves the tests run the mutated copy: it makes every
trampoline raise and stops the run if no test fails.

`--only optimizer accuracy` mutates only those modules of the part (`tasks` names the
folder's entry). `--commit HEAD` stages the part, its tests and the config from that
commit instead of the working tree: others' uncommitted edits in a shared checkout then
neither get mutated nor break the tests.

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
# Settings a part's tests need on top of [tool.mutmut]. The handler tests run torch: with
# mutmut's default "fork" isolation every mutant is forked from the process that ran the
# whole suite (torch's OpenMP pool started), and the children hang until their timeout
# (seen: every mutant after the first few "timed out", sleeping at 0% CPU). The fork
# server forks from a process that only collected the tests.
PART_SETTINGS = {"handlers": {"process_isolation": "forkserver"}}


def repo_config(source: Path = REPO) -> tuple[dict, dict[str, str]]:
    """The repo's [tool.mutmut] and its package-dir map (import path -> folder)."""
    data = tomllib.loads((source / "pyproject.toml").read_text())
    return data["tool"]["mutmut"], data["tool"]["setuptools"]["package-dir"]


def module_name(entry: str, part: str) -> str:
    """An only_mutate entry's module name: `torchserve_cpu/handlers/tasks/*` -> `tasks`,
    `torchserve_cpu/launcher/planning/planner.py` -> `planner`."""
    rest = entry.removeprefix(f"{NAMESPACE}/{part}/")
    return rest.removesuffix("/*").removesuffix(".py").rsplit("/", 1)[-1]


def only_modules(config: dict, parts: list[str], modules: list[str]) -> dict:
    """The config with only_mutate cut down to the named modules of `parts`."""
    kept = [entry for entry in config["only_mutate"]
            if any(module_name(entry, part) in modules for part in parts)]
    return {**config, "only_mutate": kept}


def export(rev: str) -> Path:
    """The files of commit `rev` (git archive), unpacked in a temporary folder."""
    into = Path(tempfile.mkdtemp(prefix="tscpu-mutation-source-"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


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
    for part in parts:
        staged.update(PART_SETTINGS.get(part, {}))
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


def stage(root: Path, parts: list[str], config: dict, package_dir: dict[str, str],
          source: Path = REPO) -> None:
    """The layout mutmut and the tests expect, built from `source` (the checkout, or an
    exported commit) under `root`. `config` is already narrowed."""
    for part in parts:
        folder = source / package_dir[f"{NAMESPACE}.{part}"]
        shutil.copytree(folder, root / NAMESPACE / part, ignore=IGNORE)
    for folder in ("tests", "scripts"):  # test_allocators reads scripts/setup.sh
        shutil.copytree(source / folder, root / folder, ignore=IGNORE)
    text = without_section((source / "pyproject.toml").read_text(), "tool.mutmut")
    staged = toml_section("tool.mutmut", config)
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
    known = parts_in(repo_config()[0])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="*", metavar="part",
                        help=f"what to mutate (default: launcher; known: {', '.join(known)})")
    parser.add_argument("--max-children", type=int, default=1,
                        help="parallel mutant runs (default 1: the machine is shared)")
    parser.add_argument("--keep", type=Path, help="stage here and keep it (must not exist)")
    parser.add_argument("--out", type=Path, help="also write the summary to this file")
    parser.add_argument("--fail-under", type=float, default=0.0,
                        help="exit 1 when a module scores below this percentage")
    parser.add_argument("--only", nargs="+", metavar="MODULE", default=[],
                        help="mutate only these modules of the part (optimizer, tasks, ...)")
    parser.add_argument("--commit", metavar="REV",
                        help="stage from this commit instead of the working tree")
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
    source = REPO
    try:
        source = export(args.commit) if args.commit else REPO
        config, package_dir = repo_config(source)
        config = narrowed(config, parts)
        if args.only:
            config = only_modules(config, parts, args.only)
            names = {module_name(e, part) for e in config["only_mutate"] for part in parts}
            if set(args.only) - names:
                parser.error(f"--only {' '.join(sorted(set(args.only) - names))}: not in "
                             "[tool.mutmut] only_mutate for " + ", ".join(parts))
        stage(root, parts, config, package_dir, source)
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
        patterns = config["only_mutate"]
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
        if source != REPO:
            shutil.rmtree(source, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
