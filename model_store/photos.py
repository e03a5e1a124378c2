"""Real inputs without a download: the photographs inside the scikit-image wheel
(`skimage/data`), rendered into deterministic crops, and the sample sentences.

Used to ship calibration / check inputs in archives (`handler.calibration`, see
handlers/archive_inputs.py) and, by benchmarks/accuracy.py, as the evaluation set on which
every served variant is compared with fp32 eager. The two use disjoint transforms.

19 photos: 9 RGB (astronaut, chelsea, coffee, motorcycle_left/right, rocket,
hubble_deep_field, retina, ihc) and 10 grayscale replicated to RGB (camera, moon, coins,
page, text, brick, grass, gravel, clock_motion, cell). Left out: synthetic graphics
(chessboard, color, phantom, logo, horse), tiny images (microaneurysms, lfw faces), and
files Pillow cannot open as photos (multipage TIFFs, disparity maps).

Each variant is a crop (size and position), a horizontal flip, a small rotation about the
crop centre and a down-then-up rescale, rendered straight to size x size x 3 uint8 with one
bicubic resize. No randomness: the same Pillow gives the same bytes.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from torchserve_cpu.handlers.optimize import CLASSIFIER_GATE

RGB_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png",
              "motorcycle_right.png", "rocket.jpg", "hubble_deep_field.jpg", "retina.jpg",
              "ihc.png")
GRAY_PHOTOS = ("camera.png", "moon.png", "coins.png", "page.png", "text.png", "brick.png",
               "grass.png", "gravel.png", "clock_motion.png", "cell.png")
SENTENCES_FILE = Path(__file__).resolve().parent / "samples" / "sentences.txt"


@dataclass(frozen=True)
class Variant:
    crop: float  # crop side as a fraction of the photo's short side
    anchor: tuple[float, float]  # crop centre as fractions of the free room (0.5: centred)
    flip: bool  # mirror left-right
    angle: float  # degrees counter-clockwise about the crop centre
    rescale: float  # 1.0, or down to this fraction and back up (blur)

    def tag(self) -> str:
        return (f"c{self.crop:g}@{self.anchor[0]:g},{self.anchor[1]:g}"
                f"{'-flip' if self.flip else ''}-r{self.angle:g}-s{self.rescale:g}")


#: evaluation: 4 crops x 2 flips x 2 (rotation, rescale) = 16 per photo, 304 images
EVAL_GRID = tuple(
    Variant(crop, anchor, flip, angle, rescale)
    for (crop, anchor), flip, (angle, rescale) in itertools.product(
        ((1.0, (0.5, 0.5)), (0.8, (0.0, 0.0)), (0.8, (1.0, 1.0)), (0.6, (0.5, 0.5))),
        (False, True),
        ((0.0, 1.0), (8.0, 0.5)),
    )
)
#: calibration: other crop sizes, positions, angles and scales (none in EVAL_GRID)
CALIB_GRID = (
    Variant(0.9, (0.5, 0.5), False, 0.0, 1.0),
    Variant(0.75, (1.0, 0.0), False, 5.0, 0.75),
    Variant(0.5, (0.3, 0.6), False, -10.0, 1.0),
    Variant(0.7, (0.6, 0.3), True, 3.0, 0.6),
)


def data_dir() -> Path:
    import skimage  # the `demo` extra; only its data files are used

    return Path(skimage.__file__).parent / "data"


def base_photos() -> list[tuple[str, Image.Image]]:
    """(name, RGB image) for every photo, in a fixed order."""
    photos = []
    for name in RGB_PHOTOS + GRAY_PHOTOS:
        with Image.open(data_dir() / name) as image:
            photos.append((name, image.convert("RGB")))
    return photos


def render(image: Image.Image, v: Variant, size: int) -> np.ndarray:
    """One variant of `image` as size x size x 3 uint8."""
    w, h = image.size
    side = v.crop * min(w, h)
    if v.angle:
        # A square of side s rotated by a needs s * (|cos a| + |sin a|): shrink the crop so
        # the rotated square stays inside the photo.
        a = math.radians(v.angle)
        side /= abs(math.cos(a)) + abs(math.sin(a))
    cx = side / 2 + v.anchor[0] * (w - side)
    cy = side / 2 + v.anchor[1] * (h - side)
    if v.angle:
        image = image.rotate(v.angle, resample=Image.BICUBIC, center=(cx, cy))
    box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    if v.rescale != 1.0:
        small = max(8, round(size * v.rescale))
        out = image.resize((small, small), Image.BICUBIC, box=box).resize(
            (size, size), Image.BICUBIC)
    else:
        out = image.resize((size, size), Image.BICUBIC, box=box)
    if v.flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.array(out, dtype=np.uint8)


def photo_set(grid: tuple[Variant, ...], size: int = 224) -> tuple[list[str], np.ndarray]:
    """(names, N x size x size x 3 uint8): every photo in every variant of `grid`."""
    names, arrays = [], []
    for name, image in base_photos():
        for v in grid:
            names.append(f"{name}:{v.tag()}")
            arrays.append(render(image, v, size))
    return names, np.stack(arrays)


def sentences() -> list[str]:
    """50 ordinary English sentences, written for these checks."""
    return [line for line in SENTENCES_FILE.read_text().splitlines() if line.strip()]


def write_calibration_images(dest: Path, count: int = 76, size: int = 256) -> Path:
    """`count` calibration photos as JPEG request bodies in `dest` (a folder): every photo
    in the calibration grid, taken in an order that visits every photo before repeating."""
    dest.mkdir(parents=True, exist_ok=True)
    names, pixels = photo_set(CALIB_GRID, size)
    per_photo = len(CALIB_GRID)
    order = [p * per_photo + v for v in range(per_photo) for p in range(len(names) // per_photo)]
    for rank, index in enumerate(order[:count]):
        Image.fromarray(pixels[index]).save(dest / f"{rank:03d}.jpg", quality=92)
    return dest


def write_calibration_sentences(dest: Path, count: int = 16) -> Path:
    """The first `count` sample sentences, one request body (.txt) each, in `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    for rank, text in enumerate(sentences()[:count]):
        (dest / f"{rank:03d}.txt").write_text(text + "\n")
    return dest


#: Trained image archives: handlers.accuracy's CLASSIFIER_GATE (top-1 agreement where fp32 is
#: confident, fp32's top-1 in the top-5, mean and worst cosine). The former gate, top-1 on 99%
#: of every photo, refused EfficientNet-Lite0 bf16, which agrees on every photo fp32 is sure
#: of: the photos are far from ImageNet (mean fp32 top-1 probability 0.33).
IMAGE_GATE = {key: getattr(CLASSIFIER_GATE, key) for key in (
    "min_cosine", "min_mean_cosine", "max_abs_diff", "topk", "min_topk_agreement",
    "confident_margin", "min_confident_agreement", "min_top1_in_top5")}


def archive_inputs(config: dict, staging: Path, trained: bool = True) -> list[Path]:
    """Real inputs for a reduced-precision archive (handler.dtype int8, bf16 or auto): written under
    `staging`, named in `config`'s handler section as `calibration`, returned as extra files
    for torch-model-archiver (a folder's contents are copied: `inputs/` holds `calibration/`).
    Image models get the 76 calibration-grid photos and, unless the config sets its own, a
    classifier gate (IMAGE_GATE); text models 16 sentences. None when the config names its own.

    A model with random weights (`trained` False: the speed benchmarks' ResNet-50 and BERT)
    has near-flat logits whose top classes reorder under any rounding, so agreement on real
    inputs says nothing about it: int8 still gets the inputs to calibrate on, without the
    top-1 gate, and bf16 keeps the gate on the example input as any archive without inputs.
    """
    handler = config.setdefault("handler", {})
    if handler.get("dtype") not in ("int8", "bf16", "auto") or "calibration" in handler:
        return []
    if not trained and handler["dtype"] == "bf16":
        return []
    folder = staging / "inputs" / "calibration"
    if handler.get("task", "image_classification") == "image_classification":
        write_calibration_images(folder)
        if trained:
            handler.setdefault("accuracy_gate", dict(IMAGE_GATE))
    else:
        write_calibration_sentences(folder)
    handler["calibration"] = "calibration"
    return [folder.parent]
