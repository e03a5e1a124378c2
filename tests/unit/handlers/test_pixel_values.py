"""handlers.tasks.pixels to the exact value: every 16-bit level, each range rule of 32-bit
and float gray at its edges, and CMYK through an embedded ICC profile (a minimal one built
here, since no CMYK profile ships with Pillow or this machine)."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image, ImageCms

from torchserve_cpu.handlers.tasks.pixels import gray_to_uint8, upright_rgb

EVERY_16_BIT = np.arange(65536, dtype=np.int64)
ROUNDED = np.rint(EVERY_16_BIT / 257).astype(np.uint8)  # v * 255 / 65535, never a tie


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I;16N"])
def test_every_16_bit_level_is_rounded(mode: str) -> None:
    assert np.array_equal(gray_to_uint8(EVERY_16_BIT.astype(np.uint16), mode), ROUNDED)


def test_32_bit_integer_within_16_bits_is_rounded_like_16_bit() -> None:
    assert np.array_equal(gray_to_uint8(EVERY_16_BIT.astype(np.int32), "I"), ROUNDED)


@pytest.mark.parametrize(("values", "expected"), [
    ([0, 255], [0, 255]),                # 8-bit data: as is
    ([0, 256], [0, 1]),                  # one past 8 bits: 16-bit scaling
    ([3, 200], [3, 200]),                # 8-bit data need not start at 0
    ([0, 200, 65536], [0, 0, 255]),      # one past 16 bits: stretched, floor
    ([258, 65790], [1, 255]),            # stretched from 0, not from the lowest value
    ([-5, -1], [0, 204]),                # all negative: stretched up to 0, not to -1
    ([-100, 50, 100], [0, 191, 255]),
])
def test_32_bit_integer_ranges(values: list[int], expected: list[int]) -> None:
    assert gray_to_uint8(np.array(values, dtype=np.int32), "I").tolist() == expected


@pytest.mark.parametrize(("values", "expected"), [
    ([0.0, 0.7, 1.0], [0, 178, 255]),          # 0..1: times 255, rounded
    ([0.0, 1.5], [0, 2]),                      # past 1: 0..255 as is
    ([0.0, 250.3, 255.0], [0, 250, 255]),      # as is up to 255
    ([0.0, 250.3, 256.0], [0, 249, 255]),      # one past: stretched
    ([0.0, 600.0, 1000.0], [0, 153, 255]),
    ([100.0, 1000.0], [26, 255]),              # stretched from 0, not from 100
    ([-100.0, 500.0, 1000.0], [0, 139, 255]),  # from the lowest when it is below 0
    ([-3.0, -1.0], [0, 170]),                  # ... up to 0 when all are negative
    ([0.0, float("nan"), float("inf")], [0, 0, 255]),
])
def test_float_ranges(values: list[float], expected: list[int]) -> None:
    assert gray_to_uint8(np.array(values, dtype=np.float32), "F").tolist() == expected


def s15_16(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def cmyk_profile(lab: tuple[int, int, int]) -> bytes:
    """A minimal ICC v2 CMYK output profile whose A2B0 (lut8, 2-point grid) maps every
    ink mix to one 8-bit-encoded Lab colour."""
    text = b"test CMYK\x00"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(4 + 4 + 2 + 1 + 67)
    d50 = s15_16(0.9642) + s15_16(1.0) + s15_16(0.8249)
    identity = b"".join(s15_16(float(i == j)) for i in range(3) for j in range(3))
    ramp = bytes(range(256))
    lut = (b"mft1" + bytes(4) + bytes([4, 3, 2, 0]) + identity + ramp * 4 + bytes(lab) * 2 ** 4
           + ramp * 3)
    tags = [(b"desc", desc), (b"wtpt", b"XYZ " + bytes(4) + d50), (b"A2B0", lut)]
    first = 128 + 4 + 12 * len(tags)
    table, body = struct.pack(">I", len(tags)), b""
    for signature, data in tags:
        data += bytes(-len(data) % 4)
        table += signature + struct.pack(">II", first + len(body), len(data))
        body += data
    header = (struct.pack(">I", first + len(body)) + bytes(4) + struct.pack(">I", 0x02100000)
              + b"prtrCMYKLab " + bytes(12) + b"acsp" + bytes(28) + d50)
    return header + bytes(128 - len(header)) + table + body


def cmyk_jpeg(profile: bytes | None) -> Image.Image:
    out = io.BytesIO()
    extra = {"icc_profile": profile} if profile else {}
    Image.new("CMYK", (4, 4), (255, 0, 0, 0)).save(out, "JPEG", quality=100, **extra)
    return Image.open(io.BytesIO(out.getvalue()))


@pytest.mark.parametrize("lab", [(200, 180, 100), (90, 100, 160)])
def test_cmyk_goes_through_its_embedded_profile(lab: tuple[int, int, int]) -> None:
    profile = cmyk_profile(lab)
    image = cmyk_jpeg(profile)
    assert image.mode == "CMYK" and image.info["icc_profile"] == profile
    expected = ImageCms.profileToProfile(image, ImageCms.ImageCmsProfile(io.BytesIO(profile)),
                                         ImageCms.createProfile("sRGB"), outputMode="RGB")
    rgb = upright_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (4, 4)
    assert np.array_equal(np.asarray(rgb), np.asarray(expected))
    plain = cmyk_jpeg(None).convert("RGB").getpixel((0, 0))
    assert rgb.getpixel((0, 0)) != plain  # the profile decided, not the plain formula


def test_an_unconvertible_mode_gets_415_naming_what_to_send(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from torchserve_cpu.handlers.errors import BadInput
    from torchserve_cpu.handlers.tasks import pixels

    monkeypatch.delitem(pixels.CONVERTERS, "L")  # stands for a mode Pillow opens, we don't
    with pytest.raises(BadInput) as refused:
        upright_rgb(Image.new("L", (4, 4)))
    assert refused.value.status == 415
    assert str(refused.value) == ("image mode 'L' is not supported: send RGB, RGBA, grayscale, "
                                  "palette, CMYK or 16-bit grayscale images")
