"""Hardening against real TorchServe on 127.0.0.1.

Bad requests each get a 4xx that names the problem while the worker that read them
lives on (same pid); a worker killed with SIGKILL under ab load is replaced on its own
core block and costs at most the requests in flight; a short soak on pinned workers
loses nothing and does not grow. The bad-input table and the kill result are written to
$TSCPU_RESULTS_DIR when set, else to a temporary folder (tests never write the repo);
to refresh the committed ones:

    TSCPU_RESULTS_DIR=benchmarks/results/hardening bash scripts/test.sh tests/e2e/test_hardening.py
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from benchmarks import loopback_torchserve as server
from benchmarks.ab import AbLoad, ab_command
from benchmarks.loopback_torchserve import Reply, post
from tests.integration.launcher.launcher_probe import wait_for
from torchserve_cpu.launcher.host.cpulist import parse_cpulist
from torchserve_cpu.launcher.torchserve.registry import read_entries
from torchserve_cpu.model_store.build import STORE_DIR, build_archive

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(os.environ.get("TSCPU_RESULTS_DIR") or tempfile.mkdtemp(prefix="hardening-"))
IMAGE = STORE_DIR / "samples" / "shapes.jpg"
SENTENCE = STORE_DIR.joinpath("samples", "sentence.txt").read_text().strip()
REJECT_LIMIT = 32  # max_length of the minilm_reject archive
ACCESS_STATUS = re.compile(r'"POST /predictions/\S+ HTTP/[\d.]+" (\d{3})')


def load_soak_module():
    """scripts/soak.py is a script, not a package: import it by path."""
    spec = importlib.util.spec_from_file_location("soak", REPO / "scripts" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


soak = load_soak_module()


# ---- request bodies -------------------------------------------------------------------

def blank_png(width: int, height: int) -> bytes:
    """A 1-bit all-black PNG: a few kB on disk, width x height pixels once decoded.

    Written chunk by chunk with zlib so the test never holds the decoded image itself.
    """
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def huge_jpeg(width: int = 6000, height: int = 6000) -> bytes:
    """36 Mpixel JPEG: under the 40 Mpixel limit, so it must be resized and served."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 120, 200)).save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def b64_json(data: bytes) -> bytes:
    return json.dumps({"data": base64.b64encode(data).decode()}).encode()


@dataclass(frozen=True)
class Case:
    """One kind of bad (or borderline) request and what the server must answer."""

    kind: str
    model: str
    body: Callable[[], bytes]
    content_type: str | None
    status: int
    names: str  # text the error message must contain ("" for a 200)


JPEG = IMAGE.read_bytes()
LONG_TEXT = " ".join([SENTENCE] * 60)  # ~1,000 tokens

CASES = [
    Case("empty body", "resnet50", lambda: b"", "image/jpeg", 400, "empty"),
    Case("non-image bytes", "resnet50", lambda: b"definitely not an image", "image/jpeg", 400,
         "cannot decode image"),
    Case("truncated JPEG", "resnet50", lambda: JPEG[: len(JPEG) // 2], "image/jpeg", 400,
         "truncated"),
    Case("PNG decompression bomb (20000x20000, 48 kB)", "resnet50",
         lambda: blank_png(20_000, 20_000), "image/png", 413, "pixel limit"),
    Case("PNG over the handler's pixel limit (8000x6000)", "resnet50",
         lambda: blank_png(8000, 6000), "image/png", 413, "exceeds the limit"),
    Case("huge JPEG within limits (6000x6000)", "resnet50", huge_jpeg, "image/jpeg", 200, ""),
    Case("malformed JSON", "resnet50", lambda: b'{"data": "abc', "application/json", 400,
         "JSON"),
    Case("JSON without an image", "resnet50", lambda: b'{"picture": 1}', "application/json",
         400, '"data"'),
    Case("base64 that does not decode", "resnet50", lambda: b'{"data": "%%%not base64"}',
         "application/json", 400, "base64"),
    Case("base64 of non-image bytes", "resnet50", lambda: b64_json(b"hello"),
         "application/json", 400, "cannot decode image"),
    Case("wrong content type (image model)", "resnet50", lambda: JPEG, "video/mp4", 415,
         "content type"),
    Case("wrong content type (text model)", "minilm", lambda: SENTENCE.encode(), "image/png",
         415, "content type"),
    Case("text over max length, truncation: truncate", "minilm", lambda: LONG_TEXT.encode(),
         "text/plain", 200, ""),
    Case("text over max length, truncation: reject", "minilm_reject",
         lambda: LONG_TEXT.encode(), "text/plain", 413, f"over the limit of {REJECT_LIMIT}"),
    Case("empty string", "minilm", lambda: b"", "text/plain", 400, "empty"),
    Case("whitespace-only JSON text", "minilm", lambda: b'{"text": "   "}', "application/json",
         400, "empty text"),
    Case("JSON text that is not a string", "minilm", lambda: b'{"text": 5}', "application/json",
         400, '"text"'),
    Case("non-UTF-8 bytes", "minilm", lambda: b"\xff\xfe\xfa caf\xe9", "text/plain", 400,
         "UTF-8"),
]


# ---- the result table -----------------------------------------------------------------

def error_text(reply: Reply) -> str:
    try:
        answer = reply.json()
    except ValueError:
        return reply.body.decode(errors="replace")[:200]
    if isinstance(answer, dict) and "error" in answer:
        return str(answer["error"])
    return str(answer)[:200]


def summary(reply: Reply) -> str:
    """A short description of a 200 answer for the table."""
    answer = reply.json()
    if "topk" in answer:
        return f"served: top-1 index {answer['topk'][0]['index']}"
    if "embedding" in answer:
        return f"served: embedding of {len(answer['embedding'])} dims"
    return "served"


@pytest.fixture(scope="module")
def table() -> Iterator[dict[str, tuple[str, str, str]]]:
    """Rows (kind, status, message), written as Markdown when the module ends."""
    rows: dict[str, tuple[str, str, str]] = {}
    yield rows
    if rows:
        RESULTS.mkdir(parents=True, exist_ok=True)
        lines = ["| kind | status | message |", "|---|---|---|"]
        for kind, status, message in rows.values():
            lines.append(f"| {kind} | {status} | {message.replace('|', '/')} |")
        (RESULTS / "bad-input.md").write_text("\n".join(lines) + "\n")


# ---- bad input ------------------------------------------------------------------------

class TestBadInput:
    """One TorchServe, unpinned: ResNet-50 batching 4, MiniLM truncating, MiniLM rejecting."""

    @pytest.fixture(scope="class")
    def serving(self, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
            tuple[server.TorchServe, dict[str, list[int]]]]:
        store = tmp_path_factory.mktemp("bad-input-store")
        build_archive("resnet50", store, workers=1, batch_size=4, max_batch_delay_ms=300,
                      handler_overrides={"response": "detailed"})  # answers by index
        build_archive("minilm", store, workers=1)
        build_archive("minilm", store, workers=1, archive_name="minilm_reject",
                      handler_overrides={"truncation": "reject", "max_length": REJECT_LIMIT})
        models = ["resnet50", "minilm", "minilm_reject"]
        ts = server.start(REPO / "config" / "config.properties", store,
                          [f"{name}.mar" for name in models],
                          run_dir=tmp_path_factory.mktemp("bad-input-ts"))
        try:
            ts.wait_ready(models, timeout=600)
            yield ts, {name: ts.worker_pids(name) for name in models}
        finally:
            ts.stop()

    @pytest.mark.parametrize("case", CASES, ids=[case.kind for case in CASES])
    def test_bad_request(self, serving, table, case: Case) -> None:
        ts, workers = serving
        reply = post(f"{ts.inference_url}/predictions/{case.model}", case.body(),
                     case.content_type)
        message = summary(reply) if reply.status == 200 else error_text(reply)
        table[case.kind] = (case.kind, str(reply.status), message)
        assert reply.status == case.status, (reply.status, message)
        assert case.names in message
        assert ts.worker_pids(case.model) == workers[case.model]  # the same worker lives on

    def test_batch_with_one_bad_item(self, serving, table) -> None:
        ts, workers = serving
        bodies = [JPEG, b"garbage", JPEG, JPEG]
        url = f"{ts.inference_url}/predictions/resnet50"
        with ThreadPoolExecutor(len(bodies)) as pool:
            replies = list(pool.map(lambda body: post(url, body, "image/jpeg"), bodies))
        statuses = [reply.status for reply in replies]
        table["batch"] = ("batch of 4, item 2 bad", ",".join(map(str, statuses)),
                          f"item 2: {error_text(replies[1])}; others {summary(replies[0])}")
        assert statuses == [200, 400, 200, 200]
        assert "cannot decode image" in error_text(replies[1])
        assert len({json.dumps(r.json()["topk"]) for r in replies if r.status == 200}) == 1
        assert ts.worker_pids("resnet50") == workers["resnet50"]

    def test_still_serving_after_all_of_it(self, serving) -> None:
        ts, workers = serving
        assert post(f"{ts.inference_url}/predictions/resnet50", JPEG, "image/jpeg").status == 200
        assert post(f"{ts.inference_url}/predictions/minilm", SENTENCE.encode(),
                    "text/plain").status == 200
        assert {name: ts.worker_pids(name) for name in workers} == workers


# ---- faults and load on pinned workers -------------------------------------------------

def cpus_allowed(pid: int) -> set[int]:
    """The kernel's view of a process's CPUs: /proc/<pid>/status Cpus_allowed_list."""
    return set(parse_cpulist(soak.cpus_allowed(pid)))


def replacement(handle: server.TorchServe, victim: int, survivor: int, timeout: float) -> int:
    """The pid of the READY worker TorchServe started in place of `victim`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = set(handle.worker_pids("resnet50"))
        if survivor in pids and pids - {victim, survivor}:
            return (pids - {victim, survivor}).pop()
        time.sleep(0.5)
    raise AssertionError(f"no replacement for worker {victim} READY after {timeout:.0f}s")


def answered_posts(handle: server.TorchServe) -> list[int]:
    """Statuses of the predictions TorchServe answered, in order, from its access log:
    the server's own count, which ab cannot give once a reply leaves it hanging."""
    path = handle.log_dir / "access_log.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    return [int(match) for match in ACCESS_STATUS.findall(text)]


def ab_completed(output: str) -> int:
    """Requests ab finished: its report's count, or the count it printed before giving up
    (ab -s aborts the whole run on one reply it waits too long for)."""
    for pattern in (r"^Complete requests:\s+(\d+)", r"Total of (\d+) requests completed"):
        match = re.search(pattern, output, re.MULTILINE)
        if match:
            return int(match.group(1))
    return 0


class TestPinnedUnderLoad:
    """`launcher serve` with the shipped config/launcher.properties: two ResNet-50
    workers, one core each, tcmalloc. The soak runs first; the kill changes the server."""

    @pytest.fixture(scope="class")
    def pinned(self, tmp_path_factory: pytest.TempPathFactory):
        directory = tmp_path_factory.mktemp("pinned")
        store = directory / "store"
        build_archive("resnet50", store, workers=2)
        registry = directory / "registry"
        registry.mkdir()
        handle, prepared = server.start_with_launcher(
            REPO / "config" / "launcher.properties", store, ["resnet50.mar"],
            run_dir=directory / "ts", extra_env={"TSCPU_REGISTRY_DIR": str(registry)},
        )
        try:
            handle.wait_ready(["resnet50"], timeout=600)
            yield handle, registry, directory
        finally:
            handle.stop()

    def test_short_soak_loses_nothing_and_does_not_grow(self, pinned) -> None:
        handle, _, directory = pinned
        result = soak.soak(handle, "resnet50", requests=1000, concurrency=64, warmup=128,
                           chunks=2, log_dir=directory / "soak")
        soak.write_result(result, directory / "soak")
        assert result.complete == 1000 and result.failed == 0, soak.render_markdown(result)
        assert result.workers_after == result.workers_before
        assert result.max_growth_pct < 5.0, soak.render_markdown(result)

    def test_kill9_under_load(self, pinned) -> None:
        handle, registry, _ = pinned
        victim, survivor = handle.worker_pids("resnet50")
        # workers re-pin on their own as neighbours arrive: read them once apart
        wait_for(lambda: cpus_allowed(victim).isdisjoint(cpus_allowed(survivor)), timeout=60)
        victim_cpus, survivor_cpus = cpus_allowed(victim), cpus_allowed(survivor)
        load = AbLoad(f"{handle.inference_url}/predictions/resnet50", IMAGE, "image/jpeg",
                      concurrency=8, requests=300, timeout_s=20)
        seen = len(answered_posts(handle))
        with subprocess.Popen(ab_command(load), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) as ab:
            time.sleep(4)  # both workers busy with requests
            assert ab.poll() is None, "ab finished before the kill"
            os.kill(victim, signal.SIGKILL)  # a worker of the server this test started
            killed_at = time.monotonic()
            out, err = ab.communicate(timeout=600)

        newcomer = replacement(handle, victim, survivor, timeout=300)
        ready_after = time.monotonic() - killed_at
        statuses = Counter(answered_posts(handle)[seen:])
        claims = {entry.pid: sorted(entry.cpus) for entry in read_entries(registry)}
        record = {
            "requests": load.requests, "concurrency": load.concurrency,
            "server_statuses": {str(code): count for code, count in statuses.items()},
            "failed": load.requests - statuses[200],
            "ab_completed": ab_completed(out), "ab_stderr": err.strip()[-300:],
            "victim": victim, "victim_cpus": sorted(victim_cpus),
            "survivor": survivor, "survivor_cpus": sorted(survivor_cpus),
            "replacement": newcomer, "replacement_cpus": sorted(cpus_allowed(newcomer)),
            "replacement_ready_after_s": round(ready_after, 1),
            "registry": {str(pid): cpus for pid, cpus in claims.items()},
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "kill9.json").write_text(json.dumps(record, indent=2) + "\n")
        assert sum(statuses.values()) == load.requests, record  # every request was answered
        assert record["failed"] <= load.concurrency, record  # at most those in flight
        assert record["ab_completed"] >= load.requests - load.concurrency, record
        # the live worker kept running: it grew while alone, then went back to its block
        wait_for(lambda: cpus_allowed(survivor) == survivor_cpus, timeout=60)
        assert cpus_allowed(newcomer).isdisjoint(cpus_allowed(survivor)), record
        assert set(claims) == {survivor, newcomer}, record
        assert post(load.url, JPEG, "image/jpeg").status == 200
