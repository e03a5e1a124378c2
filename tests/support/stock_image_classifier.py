"""A handler file archived as a stock TorchServe user archives one: TorchServe's own
`ts.torch_handler.image_classifier.ImageClassifier`, its postprocess unchanged (torch.topk
and map_class_to_label), so its answers are the reference shape our handler must give.

TorchServe's vision handlers import torchvision (transforms) and captum (explanations),
neither installable beside the CPU torch here (torchvision pulls another torch); the four
transforms ImageClassifier uses are re-made below with Pillow and numpy, as torchvision
defines them, and captum's IntegratedGradients is a placeholder no request reaches. Like a
user of EfficientNet-Lite0, the subclass sets the model's own normalisation,
(pixel - 127) / 128. The file runs in the worker: it imports only what a worker has.
"""

import sys
import types

import numpy as np
import torch
from PIL import Image


def _install_stand_ins() -> types.ModuleType:
    """torchvision.transforms and captum.attr as far as ImageClassifier uses them.

    Defined in a function: TorchServe takes the one class defined at the top of a
    handler file as the handler."""

    class Resize:
        """torchvision.transforms.Resize(int): the short side to `size`, bilinear."""

        def __init__(self, size):
            self.size = size

        def __call__(self, image):
            width, height = image.size
            short, long = min(width, height), max(width, height)
            new_long = int(self.size * long / short)
            size = (self.size, new_long) if width <= height else (new_long, self.size)
            return image.resize(size, Image.BILINEAR)


    class CenterCrop:
        """torchvision.transforms.CenterCrop(int): the centre square, offsets rounded."""

        def __init__(self, size):
            self.size = size

        def __call__(self, image):
            width, height = image.size
            left = int(round((width - self.size) / 2.0))
            top = int(round((height - self.size) / 2.0))
            return image.crop((left, top, left + self.size, top + self.size))


    class ToTensor:
        """torchvision.transforms.ToTensor: HWC uint8 -> CHW float in 0..1."""

        def __call__(self, image):
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
            return torch.from_numpy(pixels.transpose(2, 0, 1).copy())


    class Normalize:
        def __init__(self, mean, std):
            self.mean = torch.tensor(mean).view(3, 1, 1)
            self.std = torch.tensor(std).view(3, 1, 1)

        def __call__(self, tensor):
            return (tensor - self.mean) / self.std


    class Compose:
        def __init__(self, transforms):
            self.transforms = transforms

        def __call__(self, value):
            for transform in self.transforms:
                value = transform(value)
            return value


    class IntegratedGradients:
        def __init__(self, model):
            self.model = model


    transforms = types.ModuleType("torchvision.transforms")
    for _cls in (Resize, CenterCrop, ToTensor, Normalize, Compose):
        setattr(transforms, _cls.__name__, _cls)
    torchvision = types.ModuleType("torchvision")
    torchvision.transforms = transforms
    captum = types.ModuleType("captum")
    captum_attr = types.ModuleType("captum.attr")
    captum_attr.IntegratedGradients = IntegratedGradients
    captum.attr = captum_attr
    for _name, _module in (("torchvision", torchvision), ("torchvision.transforms", transforms),
                           ("captum", captum), ("captum.attr", captum_attr)):
        sys.modules.setdefault(_name, _module)

    return transforms


_transforms = _install_stand_ins()

from ts.torch_handler.image_classifier import ImageClassifier  # noqa: E402


class StockEfficientNetClassifier(ImageClassifier):
    image_processing = _transforms.Compose([
        _transforms.Resize(256), _transforms.CenterCrop(224), _transforms.ToTensor(),
        _transforms.Normalize([127 / 255] * 3, [128 / 255] * 3)])
