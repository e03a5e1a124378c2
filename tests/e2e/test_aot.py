"""The aot backend end to end: archives built with AOTInductor packages, served by real
TorchServe whose workers cannot compile (CXX points nowhere, an empty inductor cache), the
answers compared with the eager models in this process.

Archives: ResNet-50 (model_store.build, batchSize 8), MiniLM (fp32, and int8: its dynamic
int8 packaged), and a tiny conv net built
with the documented user command (`torchserve-cpu aot build`), plus two
copies of it whose records claim another torch build and a CPU flag this host lacks.
BERT-base is left out: its package is 420 MB beside 440 MB of weights (an 860 MB archive
to zip and unzip) and its compile peaks at 2.6 GB; it shares MiniLM's code path.
Packages are cached in $TSCPU_CACHE_DIR/aot: a first run compiles (about 2 minutes here),
later ones copy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image

from benchmarks import loopback_torchserve as server
from benchmarks.loopback_torchserve import post
from tests.support.models import eager_model, model_dir_for
from tests.support.tiny_archive import TINY_CONFIG, TINY_MODEL
from torchserve_cpu.handlers.aot_package import ISA_FLAGS, PackageRecord, Runtime
from torchserve_cpu.handlers.model_config import parse_settings
from torchserve_cpu.handlers.served_record import read_records
from torchserve_cpu.handlers.tasks import make_task
from torchserve_cpu.launcher.resources import HANDLER_FILE
from torchserve_cpu.model_store.build import STORE_DIR, build_archive, weights_dir

REPO = Path(__file__).resolve().parents[2]
IMAGE = STORE_DIR / "samples" / "shapes.jpg"
BIN = Path(sys.executable).parent
MAX_BATCH = 8
TINY = ("tiny", "tiny_oldtorch", "tiny_noisa")


def missing_flag() -> str:
    """An ISA flag this CPU does not have (an Arm one on x86, an x86 one on Arm)."""
    return next(flag for flag in ISA_FLAGS if flag not in Runtime.here().cpu_flags)


def tiny_archives(work: Path, store: Path) -> None:
    """The tiny net archived as a user would: state dict, `torchserve-cpu aot build`, archiver;
    then the same packages with records edited to claim what this host cannot run."""
    (work / "model.py").write_text(TINY_MODEL)
    (work / "model-config.yaml").write_text(
        TINY_CONFIG.format(workers=1)
        + "  optimize: aot\n  aot_max_batch: 4\n  response: detailed\n")
    run = {"cwd": work, "check": True, "timeout": 600}
    subprocess.run([sys.executable, "-c", "import torch, model; torch.manual_seed(0); "
                    "torch.save(model.TinyConvNet().state_dict(), 'tiny.pt')"], **run)
    subprocess.run([sys.executable, "-m", "torchserve_cpu.launcher", "aot", "build",
                    "--model-file", "model.py", "--serialized-file", "tiny.pt",
                    "--config-file", "model-config.yaml", "-o", "aot",
                    "--cache-dir", str(weights_dir().parent / "aot")], **run)
    record = PackageRecord.from_json((work / "aot" / "aot-fp32.json").read_text())
    edits = {"tiny": {}, "tiny_oldtorch": {"torch": "2.0.0+cpu"},
             "tiny_noisa": {"cpu_flags": (*record.cpu_flags, missing_flag())}}
    for name, edit in edits.items():
        folder = work / name
        folder.mkdir()
        (folder / "aot-fp32.pt2").symlink_to(work / "aot" / "aot-fp32.pt2")
        edited = json.loads(record.to_json()) | {k: list(v) if isinstance(v, tuple) else v
                                                 for k, v in edit.items()}
        (folder / "aot-fp32.json").write_text(json.dumps(edited))
        subprocess.run([str(BIN / "torch-model-archiver"), "--model-name", name,
                        "--version", "1.0", "--model-file", "model.py",
                        "--serialized-file", "tiny.pt", "--handler", str(HANDLER_FILE),
                        "--config-file", "model-config.yaml", "--export-path", str(store),
                        "--extra-files", f"{name}/aot-fp32.pt2,{name}/aot-fp32.json",
                        "--force"], **run)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("store")
    aot = {"optimize": "aot"}
    build_archive("resnet50", out, workers=1, batch_size=MAX_BATCH, max_batch_delay_ms=500,
                  handler_overrides={**aot, "response": "detailed"})  # answers by index
    build_archive("minilm", out, workers=1, handler_overrides=aot)
    build_archive("minilm", out, workers=1, archive_name="minilm_int8",
                  handler_overrides={**aot, "dtype": "int8"})  # dynamic int8, packaged
    tiny_archives(tmp_path_factory.mktemp("tiny"), out)
    return out


@pytest.fixture(scope="module")
def inductor_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("inductor-cache")


@pytest.fixture(scope="module")
def serving(store: Path, inductor_cache: Path, tmp_path_factory: pytest.TempPathFactory):
    # Workers that try to compile fail: no C++ compiler, and a cache of their own to check.
    env = {"CXX": "/nonexistent/c++", "TORCHINDUCTOR_CACHE_DIR": str(inductor_cache)}
    names = ["resnet50", "minilm", "minilm_int8", *TINY]
    ts = server.start(REPO / "config" / "config.properties", store,
                      [f"{name}.mar" for name in names], env=env,
                      run_dir=tmp_path_factory.mktemp("ts"))
    try:
        ts.wait_ready(names, timeout=900)
        yield ts
    finally:
        ts.stop()


def model_log(ts: server.TorchServe) -> str:
    return (ts.log_dir / "model_log.log").read_text(errors="replace")


def record_of(ts: server.TorchServe, model: str):
    return next(r for r in read_records(model_log(ts)) if r.model == model)


def predict(ts: server.TorchServe, model: str, body: bytes, content_type: str):
    return post(f"{ts.inference_url}/predictions/{model}", body, content_type)


def test_every_aot_archive_is_served_by_its_package(serving: server.TorchServe) -> None:
    for model in ("resnet50", "minilm", "tiny"):
        record = record_of(serving, model)
        assert record.pipeline == "aot[aot]", (model, record.rejected)
        assert record.rejected == ()
        assert "aot-fp32.pt2 loaded" in record.notes[0]


def image_variants(count: int) -> list[bytes]:
    """Distinct JPEGs (the sample rotated), so each item of a batch has its own answer."""
    import io

    image = Image.open(IMAGE).convert("RGB")
    bodies = []
    for angle in range(count):
        buffer = io.BytesIO()
        image.rotate(angle * 17).save(buffer, format="JPEG", quality=95)
        bodies.append(buffer.getvalue())
    return bodies


def test_batches_1_to_8_match_eager_without_recompiling(serving: server.TorchServe,
                                                       inductor_cache: Path,
                                                       tmp_path: Path) -> None:
    pids = serving.worker_pids("resnet50")
    bodies = image_variants(MAX_BATCH)
    task = make_task(parse_settings({"task": "image_classification"}), tmp_path)
    inputs = task.collate([task.decode(body, None) for body in bodies])
    with torch.no_grad():
        expected = eager_model("resnet50")(*inputs).topk(5).indices.tolist()
    for size in range(1, MAX_BATCH + 1):  # `size` concurrent requests: one batch of `size`
        with ThreadPoolExecutor(size) as pool:
            replies = list(pool.map(lambda b: predict(serving, "resnet50", b, "image/jpeg"),
                                    bodies[:size]))
        for index, reply in enumerate(replies):
            assert reply.status == 200, reply.body
            assert [e["index"] for e in reply.json()["topk"]] == expected[index], (size, index)
    assert serving.worker_pids("resnet50") == pids
    assert not [p for p in inductor_cache.rglob("*") if p.suffix in (".so", ".cpp")]


@pytest.mark.parametrize(("model", "min_cosine"), [("minilm", 0.999), ("minilm_int8", 0.99)])
def test_minilm_embeddings_match_eager(serving: server.TorchServe, tmp_path: Path,
                                       model: str, min_cosine: float) -> None:
    sentences = ["A cat sits on the warm windowsill.", "Stock markets fell on Monday."]
    task = make_task(parse_settings({"task": "text_embedding"}), model_dir_for("minilm", tmp_path))
    with torch.no_grad():  # eager on both at once; the server answers each on its own
        expected = eager_model("minilm")(*task.collate([task.decode(s.encode(), None)
                                                        for s in sentences]))
    replies = [predict(serving, model, s.encode(), "text/plain") for s in sentences]
    assert [reply.status for reply in replies] == [200, 200]
    served = torch.tensor([reply.json()["embedding"] for reply in replies])
    assert (torch.nn.functional.cosine_similarity(served, expected) >= min_cosine).all()


def test_minilm_int8_is_served_by_its_dynamic_int8_package(serving: server.TorchServe) -> None:
    """Not quantized and compiled at start (15-17 s per worker, and no compiler here)."""
    record = record_of(serving, "minilm_int8")
    assert (record.pipeline, record.dtype) == ("aot[aot] int8", "int8"), record.rejected
    assert "aot-int8.pt2 loaded" in record.notes[0] and "int8 dynamic" in record.notes[0]


@pytest.mark.parametrize(("model", "reason"), [
    ("tiny_oldtorch", "built for torch 2.0.0+cpu, running "),
    ("tiny_noisa", "this CPU lacks "),
])
def test_package_that_cannot_run_here_falls_back_and_serves(
        serving: server.TorchServe, model: str, reason: str) -> None:
    record = record_of(serving, model)
    assert record.pipeline.startswith("default[")
    assert record.rejected[0].startswith("aot[aot] failed") and reason in record.rejected[0]
    if model == "tiny_noisa":
        assert missing_flag() in record.rejected[0]
    assert f"optimizer: aot[aot] failed: StepError: aot-fp32.pt2: {reason}" in model_log(serving)
    reply = predict(serving, model, IMAGE.read_bytes(), "image/jpeg")
    assert reply.status == 200 and len(reply.json()["topk"]) == 2
    good = predict(serving, "tiny", IMAGE.read_bytes(), "image/jpeg").json()["topk"]
    assert [e["index"] for e in reply.json()["topk"]] == [e["index"] for e in good]
