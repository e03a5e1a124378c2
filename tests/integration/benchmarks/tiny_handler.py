"""A tiny image classifier handler for the benchmark driver's end-to-end test."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from ts.torch_handler.base_handler import BaseHandler


class TinyHandler(BaseHandler):
    """Decodes a JPEG to 32x32, runs a scripted two-layer CNN, returns the top class."""

    def preprocess(self, data: list[dict]) -> torch.Tensor:
        images = []
        for row in data:
            body = row.get("data") or row.get("body")
            image = Image.open(io.BytesIO(body)).convert("RGB").resize((32, 32))
            images.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0))
        return torch.stack(images).permute(0, 3, 1, 2)

    def postprocess(self, output: torch.Tensor) -> list[dict]:
        return [{"class": int(row.argmax())} for row in output]
