from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from shared.imaging import (
    SYNTHETIC_KEY,
    ImageDecodeError,
    decode_image,
    encode_png,
    encode_synthetic_png,
    read_png_text,
)
from tests.fixtures.archives import corrupt_png


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares a huge image (pixels never stored)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def test_rgb_and_grayscale_keep_their_channels() -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (12, 20, 3), dtype=np.uint8)
    gray = rgb[:, :, 0].copy()
    decoded_rgb = decode_image(encode_png(rgb))
    decoded_gray = decode_image(encode_png(gray))
    assert decoded_rgb.mode == "RGB" and np.array_equal(decoded_rgb.pixels, rgb)
    assert decoded_gray.mode == "L" and np.array_equal(decoded_gray.pixels, gray)
    assert decoded_rgb.size == (20, 12)


def test_sixteen_bit_grayscale_is_scaled_to_eight_bits() -> None:
    array = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    decoded = decode_image(buffer.getvalue())
    assert (
        decoded.pixels.dtype == np.uint8
        and decoded.pixels.min() == 0
        and decoded.pixels.max() == 255
    )


def test_decompression_bomb_is_refused_before_decoding() -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(_bomb_png(100_000, 100_000), max_pixels=1_000_000)
    assert info.value.reason == "too_large"


def test_truncated_and_garbage_files_are_refused() -> None:
    with pytest.raises(ImageDecodeError) as truncated:
        decode_image(corrupt_png())
    assert truncated.value.reason in ("truncated", "corrupt")
    with pytest.raises(ImageDecodeError) as garbage:
        decode_image(b"definitely not an image")
    assert garbage.value.reason == "corrupt"


def test_synthetic_png_carries_its_marker() -> None:
    pixels = np.zeros((4, 4, 3), dtype=np.uint8)
    data = encode_synthetic_png(pixels, {"tailsynth:seed": "7", "tailsynth:job": "abc"})
    text = read_png_text(data)
    assert text[SYNTHETIC_KEY] == "true" and text["tailsynth:seed"] == "7"
    assert SYNTHETIC_KEY not in read_png_text(encode_png(pixels))
