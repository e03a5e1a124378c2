"""Any image Pillow opens -> upright 8-bit RGB, the pixels image models are trained on.

`Image.convert("RGB")` alone gets what cameras, phones and browsers send wrong:
- 16-bit grayscale (PNG, TIFF, PGM: modes I;16*) and 32-bit "I" / float "F" are clipped
  at 255, so a normal 16-bit photo turns almost white; they are scaled here.
- Transparent pixels (RGBA, LA, PA, premultiplied RGBa / La, and 1 / L / P / RGB with a
  `transparency` entry, e.g. a PNG tRNS chunk) keep whatever colour is stored under them,
  often black; here they are composited over white, as a browser shows them on a page.
- EXIF Orientation (phones store the pixels sideways and say Orientation=6 or 8) is
  ignored; ImageOps.exif_transpose applies it.
- CMYK (print JPEGs) converts through its embedded ICC profile when it has one.
48-bit RGB PNGs need nothing: Pillow reads them as 8-bit RGB (keeping the high byte).
A mode with no rule here (none that Pillow 13 opens) is refused with a 415 naming it.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageCms, ImageOps

from torchserve_cpu.handlers.errors import BadInput

BACKGROUND = (255, 255, 255)
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def upright_rgb(image: Image.Image) -> Image.Image:
    """`image` turned as its EXIF Orientation says, as 8-bit RGB."""
    ImageOps.exif_transpose(image, in_place=True)  # no copy when there is nothing to turn
    convert = CONVERTERS.get(image.mode)
    if convert is None:
        raise BadInput(f"image mode {image.mode!r} is not supported: send RGB, RGBA, "
                       "grayscale, palette, CMYK or 16-bit grayscale images", 415)
    return convert(image)


def _opaque(image: Image.Image) -> Image.Image:
    """1, L, P, RGB, RGBX, YCbCr, HSV, LAB: Pillow's conversion is right, unless a
    transparency entry makes some pixels see-through."""
    if "transparency" in image.info:
        return _over_background(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def _over_background(image: Image.Image) -> Image.Image:
    """Composite over BACKGROUND: fully transparent pixels become BACKGROUND."""
    with warnings.catch_warnings():  # "Palette images with Transparency ..." is handled here
        warnings.simplefilter("ignore", UserWarning)
        rgba = image.convert("LA" if image.mode == "La" else "RGBA")  # no La -> RGBA
    if rgba.mode != "RGBA":
        rgba = rgba.convert("RGBA")
    base = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
    return Image.alpha_composite(base, rgba).convert("RGB")


def gray_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """High-bit-depth gray values scaled (rounded) to 0..255, never clipped.

    I;16*: v * 255 / 65535. "I" (32-bit int) carries 8-bit, 16-bit or wider data with no
    depth recorded, so its range decides: within 0..255 as is, within 0..65535 as 16-bit,
    else stretched from min(0, lowest)..highest. "F": within 0..1 times 255, within 0..255
    as is, else stretched the same way.
    """
    if mode in SIXTEEN_BIT:
        return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if mode == "I":
        wide = values.astype(np.int64)
        low, high = int(wide.min(initial=0)), int(wide.max(initial=0))
        if low >= 0 and high <= 255:
            return wide.astype(np.uint8)
        if low >= 0 and high <= 65535:
            return ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return ((wide - low) * 255 // (high - low)).astype(np.uint8)
    floats = np.nan_to_num(values.astype(np.float64))
    low, high = float(floats.min(initial=0.0)), float(floats.max(initial=0.0))
    if low >= 0 and high <= 1:
        floats = floats * 255
    elif not (low >= 0 and high <= 255):
        floats = (floats - low) * (255 / (high - low))
    return np.clip(np.rint(floats), 0, 255).astype(np.uint8)


def _high_bit_gray(image: Image.Image) -> Image.Image:
    """I;16*, I, F -> gray RGB; a tRNS gray value (16-bit PNG) becomes BACKGROUND."""
    values = np.asarray(image)
    rgb = np.repeat(gray_to_uint8(values, image.mode)[..., None], 3, axis=2)
    transparent = image.info.get("transparency")
    if isinstance(transparent, int):
        rgb[values == transparent] = BACKGROUND
    return Image.fromarray(rgb, "RGB")


def _cmyk(image: Image.Image) -> Image.Image:
    """Through the embedded ICC profile to sRGB; Pillow's plain formula when there is none
    (Pillow's JPEG decoder already undoes Adobe's inverted CMYK)."""
    profile = image.info.get("icc_profile")
    if profile:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"),
                                             outputMode="RGB")
        except (ImageCms.PyCMSError, OSError):  # unreadable profile: the plain formula
            pass
    return image.convert("RGB")


#: image mode -> its conversion to 8-bit RGB
CONVERTERS: dict[str, Callable[[Image.Image], Image.Image]] = {
    **dict.fromkeys(("1", "L", "P", "RGB", "RGBX", "YCbCr", "HSV", "LAB"), _opaque),
    **dict.fromkeys(("RGBA", "RGBa", "LA", "La", "PA"), _over_background),
    **dict.fromkeys((*SIXTEEN_BIT, "I", "F"), _high_bit_gray),
    "CMYK": _cmyk,
}
