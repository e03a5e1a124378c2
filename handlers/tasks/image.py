"""Image classification: JPEG/PNG bytes (or base64 in JSON) -> normalized tensor -> top-k,
answered as TorchServe's image_classifier does (`{label: probability}`, highest first) or,
with `handler.response: detailed`, as `{"topk": [{"index", "label", "probability"}]}`.

Any image Pillow opens becomes upright 8-bit RGB first (handlers.tasks.pixels: EXIF
orientation, 16-bit, transparency, CMYK). Pre-processing is a large share of a served
request at batch 1, so it is kept cheap: JPEG draft mode decodes at a reduced scale close
to the resize target, one resize call both scales and crops, and the uint8 HWC pixels
become the model's channels-last input without a layout copy.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from torchserve_cpu.handlers.errors import BadInput
from torchserve_cpu.handlers.settings import HandlerSettings
from torchserve_cpu.handlers.tasks.labels import label, label_problem, read_labels, stock_answer
from torchserve_cpu.handlers.tasks.pixels import upright_rgb

IMAGE_TYPES = ("image/", "application/octet-stream", "application/json", "text/plain")


def image_bytes(body: object, content_type: str | None) -> bytes:
    """The encoded image in a request: raw bytes, or base64 under JSON "data"/"image"."""
    if content_type and not content_type.startswith(IMAGE_TYPES):
        raise BadInput(f"unsupported content type {content_type!r}: send image bytes or JSON",
                       415)
    if isinstance(body, (bytes, bytearray)):
        if body[:1] in (b"{", b"["):
            try:
                body = json.loads(body)
            except (ValueError, UnicodeDecodeError) as error:
                raise BadInput(f"body looks like JSON but does not parse: {error}") from None
        else:
            return bytes(body)
    if isinstance(body, dict):
        encoded = body.get("data", body.get("image"))
        if not isinstance(encoded, str):
            raise BadInput('JSON body needs a base64 string under "data" or "image"')
        body = encoded
    if isinstance(body, str):
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise BadInput("image is not valid base64") from None
    raise BadInput(f"cannot read an image from a {type(body).__name__} body")


def center_crop_box(width: int, height: int, resize: int, crop: int) -> tuple[float, ...]:
    """The source rectangle that resizing the short side to `resize` and cropping the
    centre `crop` square would keep, so one resize call does both."""
    scale = min(width, height) / resize
    side = crop * scale
    left = (width - side) / 2
    top = (height - side) / 2
    return (left, top, left + side, top + side)


class ImageClassification:
    classifies = True
    tensor_inputs = False

    def __init__(self, settings: HandlerSettings, model_dir: Path) -> None:
        self.settings = settings
        self.labels = read_labels(model_dir)
        self.mean = torch.tensor(settings.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(settings.std).view(1, 3, 1, 1)

    def decode(self, body: object, content_type: str | None) -> np.ndarray:
        """HxWx3 uint8 RGB pixels of the centre crop, upright."""
        data = image_bytes(body, content_type)
        if not data:
            raise BadInput("empty request body: send an image")
        size, resize = self.settings.image_size, self.settings.resize_size
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))
                width, height = image.size
                if width * height > self.settings.max_image_pixels:
                    raise BadInput(f"image of {width}x{height} pixels exceeds the limit of "
                                   f"{self.settings.max_image_pixels} pixels", 413)
                if image.format == "JPEG":
                    image.draft("RGB", (resize, resize))
                image = upright_rgb(image)
                box = center_crop_box(*image.size, resize, size)
                image = image.resize((size, size), Image.BILINEAR, box=box)
        except BadInput:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            # Pillow refuses these in Image.open, before our own limit is checked: the
            # same kind of refusal, so the same 413.
            raise BadInput(f"image exceeds the pixel limit: {error}", 413) from None
        except UnidentifiedImageError:  # Pillow's message only names the BytesIO object
            raise BadInput("cannot decode image: not a format Pillow reads (JPEG, PNG, ...)"
                           ) from None
        except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data
            raise BadInput(f"cannot decode image: {error}") from None
        return np.asarray(image)

    def collate(self, samples: list[np.ndarray]) -> tuple[torch.Tensor]:
        # NHWC uint8 viewed as NCHW is already channels-last; float ops keep that layout.
        pixels = torch.from_numpy(np.stack(samples)).permute(0, 3, 1, 2)
        return ((pixels.float() - self.mean) / self.std,)

    def example_inputs(self, batch_size: int) -> tuple[torch.Tensor]:
        generator = torch.Generator().manual_seed(0)
        size = self.settings.image_size
        return (torch.randn(batch_size, 3, size, size, generator=generator),)

    def answer(self, output: torch.Tensor, samples: list | None = None) -> list[object]:
        probabilities = torch.softmax(output.float(), dim=1)
        # TorchServe's topk fails on a model with fewer classes than k: here all of them
        k = min(self.settings.topk, probabilities.shape[1])
        top = probabilities.topk(k, dim=1)
        rows = zip(top.values.tolist(), top.indices.tolist())
        if self.settings.response == "stock":
            return [stock_answer(values, indices, self.labels) for values, indices in rows]
        return [
            {"topk": [{"index": i, "label": label(self.labels, i), "probability": p}
                      for p, i in zip(values, indices)]}
            for values, indices in rows
        ]

    def output_problems(self, output: torch.Tensor) -> list[str]:
        """The labels file against the model's classes (a wrong size: a warning at load)."""
        problem = label_problem(self.labels, int(output.shape[-1]))
        return [problem] if problem else []
