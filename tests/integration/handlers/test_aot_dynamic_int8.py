"""An int8 AOTInductor package for a model without convolutions (dynamic int8: torchao's
int8 weights per channel, activations quantized per token inside the graph), built at
archive time and served by the handler's own build path instead of quantizing at start.

The model is a tabular MLP the model store never saw (tests/support/tiny_archive); the
build is real (torch.export + AOTInductor: about 20 s here for the fp32 and int8 packages).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.support.tiny_archive import TABULAR_MODEL
from torchserve_cpu.handlers.aot_package import PackageRecord
from torchserve_cpu.handlers.archive import build_packages
from torchserve_cpu.handlers.loading import load_model
from torchserve_cpu.handlers.served_model import build_served_model

pytest.importorskip("torchao", reason="dynamic int8: the [int8] extra")

MANIFEST = {"model": {"modelName": "tabular", "modelVersion": "1.0",
                      "modelFile": "tabular.py", "serializedFile": "tabular.pt"}}
SECTION = {"task": "tensor", "input_shape": [8], "warmup_iterations": 1, "itt_ranges": False,
           "optimize": "aot", "dtype": "int8", "aot_max_batch": 4}
ROWS = torch.randn(6, 8, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tabular")
    (folder / "tabular.py").write_text(TABULAR_MODEL)
    torch.manual_seed(0)
    fresh = load_model(folder, {"model": {"modelFile": "tabular.py"}})  # seeded weights
    torch.save(fresh.state_dict(), folder / "tabular.pt")
    built = build_packages(folder, MANIFEST, {"handler": SECTION}, folder)
    assert sorted(b.record.dtype for b in built) == ["fp32", "int8"]
    return folder


def test_the_int8_package_is_dynamic_and_checked_at_build(archive: Path) -> None:
    record = PackageRecord.from_json((archive / "aot-int8.json").read_text())
    assert record.refused is None and (archive / "aot-int8.pt2").stat().st_size > 0
    assert record.activation_bits is None and record.int8_flags == ()  # not PT2E static
    assert "dynamic (torchao" in record.checked["int8"]["note"]
    assert record.checked["calibration"]["cosine"] >= 0.99


def test_a_worker_serves_the_int8_package_without_quantizing(archive: Path) -> None:
    served = build_served_model(archive, MANIFEST, SECTION)
    assert served.model.plan.describe() == "aot[aot] int8" and served.model.dtype == "int8"
    (note,) = [n for n in served.model.stage.notes if "aot-int8.pt2 loaded" in n]
    assert "int8 dynamic" in note
    with torch.no_grad():
        expected = load_model(archive, MANIFEST)(ROWS)
        got = served(ROWS).float()  # 6 rows: the package runs 4, then 2
    assert torch.nn.functional.cosine_similarity(got, expected).min() >= 0.99
