"""Every image mode Pillow opens becomes correct 8-bit RGB: known pixels in, expected out.

Files are made with Pillow (PNG keeps pixels exact) and read back as the handler reads a
request, so each case goes through the mode the decoder really produces."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from torchserve_cpu.handlers.errors import BadInput
from torchserve_cpu.handlers.settings import HandlerSettings
from torchserve_cpu.handlers.tasks import pixels
from torchserve_cpu.handlers.tasks.image import ImageClassification
from torchserve_cpu.handlers.tasks.pixels import upright_rgb

WHITE = [255, 255, 255]
ORIENTATION = 0x0112  # the EXIF tag


def saved(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def reopened(image: Image.Image, fmt: str = "PNG", **params: object) -> Image.Image:
    return Image.open(io.BytesIO(saved(image, fmt, **params)))


def rgb_of(image: Image.Image) -> list:
    converted = upright_rgb(image)
    assert converted.mode == "RGB"
    return np.asarray(converted).tolist()


def row(*colours: list[int]) -> list:
    return [list(colours)]


RAMP16 = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
RAMP8 = [0, 1, 128, 255]  # round(v * 255 / 65535)


def test_16_bit_png_is_scaled_not_clipped() -> None:
    image = reopened(Image.fromarray(RAMP16))
    assert image.mode == "I;16"
    assert rgb_of(image) == row(*([v] * 3 for v in RAMP8))
    # What convert("RGB") alone does: everything from 255 up is white.
    assert np.asarray(image.convert("RGB"))[0, :, 0].tolist() == [0, 255, 255, 255]


def test_16_bit_big_endian() -> None:
    image = Image.fromarray(RAMP16.astype(">u2"))
    assert image.mode == "I;16B"
    assert rgb_of(image) == row(*([v] * 3 for v in RAMP8))


def test_16_bit_png_transparent_gray_value_is_white() -> None:
    image = reopened(Image.fromarray(RAMP16), transparency=32768)
    assert image.mode == "I;16" and image.info["transparency"] == 32768
    assert rgb_of(image) == row([0, 0, 0], [1, 1, 1], WHITE, WHITE)


@pytest.mark.parametrize(("values", "expected"), [
    ([0, 7, 255], [0, 7, 255]),                # 8-bit data in a 32-bit container
    ([0, 257, 65535], [0, 1, 255]),            # 16-bit data
    ([0, 100_000, 200_000], [0, 127, 255]),    # wider: stretched over its range
    ([-100, 0, 100], [0, 127, 255]),
])
def test_32_bit_integer(values: list[int], expected: list[int]) -> None:
    image = Image.fromarray(np.array([values], dtype=np.int32))
    assert image.mode == "I"
    assert rgb_of(image) == row(*([v] * 3 for v in expected))


@pytest.mark.parametrize(("values", "expected"), [
    ([0.0, 0.5, 1.0], [0, 128, 255]),          # 0..1
    ([0.0, 12.4, 200.0], [0, 12, 200]),        # 0..255
    ([-1.0, 0.0, 1000.0], [0, 0, 255]),        # else stretched
    ([0.0, float("nan"), 1.0], [0, 0, 255]),
])
def test_float(values: list[float], expected: list[int]) -> None:
    image = Image.fromarray(np.array([values], dtype=np.float32))
    assert image.mode == "F"
    assert rgb_of(image) == row(*([v] * 3 for v in expected))


def test_bilevel_and_gray() -> None:
    bilevel = Image.new("1", (2, 1), 0)
    bilevel.putpixel((1, 0), 1)
    assert rgb_of(reopened(bilevel)) == row([0, 0, 0], WHITE)
    assert rgb_of(reopened(Image.new("L", (1, 1), 77))) == row([77, 77, 77])


def test_gray_with_alpha_over_white() -> None:
    image = Image.new("LA", (3, 1), (10, 255))
    image.putpixel((1, 0), (10, 0))
    image.putpixel((2, 0), (10, 128))
    got = rgb_of(reopened(image))
    assert got[0][:2] == [[10, 10, 10], WHITE]
    assert np.abs(np.array(got[0][2]) - 132).max() <= 1  # 10 * 128/255 + 255 * 127/255


def test_premultiplied_modes() -> None:
    assert rgb_of(Image.new("La", (1, 1), (0, 0))) == row(WHITE)
    assert rgb_of(Image.new("La", (1, 1), (50, 255))) == row([50, 50, 50])
    assert rgb_of(Image.new("RGBa", (1, 1), (0, 0, 0, 0))) == row(WHITE)
    assert rgb_of(Image.new("RGBa", (1, 1), (200, 100, 50, 255))) == row([200, 100, 50])


def test_palette_with_transparent_index() -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 255, 0])
    image.putpixel((1, 0), 1)
    image = reopened(image, transparency=0)  # index 0 (red) see-through: a tRNS chunk
    assert image.mode == "P" and image.info["transparency"] == 0
    assert rgb_of(image) == row(WHITE, [0, 255, 0])


def test_palette_opaque_and_palette_alpha() -> None:
    image = Image.new("P", (1, 1))
    image.putpalette([1, 2, 3])
    assert rgb_of(reopened(image)) == row([1, 2, 3])
    assert rgb_of(Image.new("PA", (1, 1), (0, 0))) == row(WHITE)


def test_rgba_composited_over_white() -> None:
    image = Image.new("RGBA", (3, 1), (200, 100, 50, 255))
    image.putpixel((1, 0), (0, 0, 0, 0))  # fully transparent black
    image.putpixel((2, 0), (200, 100, 50, 128))
    got = rgb_of(reopened(image))
    assert got[0][:2] == [[200, 100, 50], WHITE]
    assert np.abs(np.array(got[0][2]) - [228, 178, 153]).max() <= 1
    # What convert("RGB") alone does: the stored black shows.
    assert np.asarray(image.convert("RGB"))[0, 1].tolist() == [0, 0, 0]


def test_rgb_with_transparent_colour() -> None:
    image = Image.new("RGB", (2, 1), (10, 20, 30))
    image.putpixel((1, 0), (1, 2, 3))
    image = reopened(image, transparency=(10, 20, 30))
    assert rgb_of(image) == row(WHITE, [1, 2, 3])


def test_cmyk_jpeg() -> None:
    image = reopened(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=100)
    assert image.mode == "CMYK"
    r, g, b = rgb_of(image)[0][0]
    assert r > 240 and g < 15 and b < 15  # no cyan, full magenta and yellow: red


def test_cmyk_with_unreadable_profile_uses_the_plain_formula() -> None:
    image = Image.new("CMYK", (1, 1), (0, 0, 0, 255))
    image.info["icc_profile"] = b"not a profile"
    assert rgb_of(image) == row([0, 0, 0])


@pytest.mark.parametrize(("mode", "value", "expected"), [
    ("RGBX", (1, 2, 3, 0), [1, 2, 3]),
    ("YCbCr", (76, 85, 255), [254, 0, 0]),
    ("HSV", (0, 255, 255), [255, 0, 0]),
    ("LAB", (128, 128, 128), [119, 119, 119]),  # L* 50, neutral
])
def test_other_colour_spaces(mode: str, value: tuple[int, ...], expected: list[int]) -> None:
    assert rgb_of(Image.new(mode, (1, 1), value)) == row(expected)


def test_every_mode_pillow_knows_has_a_rule() -> None:
    assert set(Image.MODES) <= set(pixels.CONVERTERS)


def test_a_mode_without_a_rule_is_a_415_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(pixels.CONVERTERS, "CMYK")
    with pytest.raises(BadInput, match="'CMYK' is not supported") as caught:
        upright_rgb(Image.new("CMYK", (1, 1)))
    assert caught.value.status == 415


# EXIF orientation: stored pixels 2x3, what a viewer shows (np.rot90 / flips of them).
STORED = np.arange(6, dtype=np.uint8).reshape(2, 3) * 40
SHOWN = {
    1: STORED,
    2: STORED[:, ::-1],
    3: STORED[::-1, ::-1],
    4: STORED[::-1, :],
    5: STORED.T,
    6: np.rot90(STORED, k=-1),  # phone held upright: turn the stored pixels clockwise
    7: np.rot90(STORED, k=-1)[::-1, :],
    8: np.rot90(STORED, k=1),
}


@pytest.mark.parametrize("orientation", sorted(SHOWN))
def test_exif_orientation(orientation: int) -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    image = reopened(Image.fromarray(STORED), exif=exif.tobytes())
    assert np.array(rgb_of(image))[..., 0].tolist() == SHOWN[orientation].tolist()


def test_decode_turns_a_sideways_jpeg_upright(tmp_path) -> None:
    """A phone photo: wide scene stored tall, Orientation=6. After decoding, the scene's
    left half (red) is on the left again."""
    scene = np.zeros((200, 300, 3), dtype=np.uint8)
    scene[:, :150] = (255, 0, 0)
    scene[:, 150:] = (0, 0, 255)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    body = saved(Image.fromarray(np.rot90(scene, k=1)), "JPEG", exif=exif.tobytes())
    task = ImageClassification(HandlerSettings(image_size=64, resize_size=64), tmp_path)
    crop = task.decode(body, "image/jpeg").astype(int)
    assert crop.shape == (64, 64, 3)
    assert crop[:, :24, 0].min() > 200 and crop[:, :24, 2].max() < 60
    assert crop[:, 40:, 2].min() > 200 and crop[:, 40:, 0].max() < 60


def test_decode_scales_a_16_bit_png(tmp_path) -> None:
    task = ImageClassification(HandlerSettings(image_size=8, resize_size=8), tmp_path)
    body = saved(Image.fromarray(np.full((16, 16), 32768, dtype=np.uint16)))
    assert (task.decode(body, "image/png") == 128).all()
