"""Image IO with explicit limits, shared by every service.

Decoding untrusted uploads is where image libraries get attacked: a 50 kB PNG can
declare 100,000 x 100,000 pixels (a decompression bomb). Every decode in tailsynth
goes through :func:`decode_image`, which checks the declared size *before* pixels
are decoded and refuses truncated files instead of silently padding them.

Synthetic images are written by :func:`encode_png` with a ``tEXt`` chunk
``tailsynth:synthetic=true`` plus their provenance, so a PNG that leaves the system
still says what it is.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, PngImagePlugin, UnidentifiedImageError

# A truncated file must raise, never decode to a half-grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False

DEFAULT_MAX_PIXELS = 40_000_000  # a 6,300 x 6,300 dermoscopy image is well inside
SYNTHETIC_KEY = "tailsynth:synthetic"


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image within the limits; ``reason`` says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # "corrupt" | "truncated" | "too_large" | "unsupported_mode"


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image: ``pixels`` is uint8, shape (H, W) for grayscale or (H, W, 3)."""

    pixels: np.ndarray
    sha256: str
    format: str

    @property
    def mode(self) -> str:
        return "L" if self.pixels.ndim == 2 else "RGB"

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode ``data`` to RGB or grayscale uint8 pixels, refusing bombs and truncation.

    Grayscale sources (chest X-rays) stay one channel; everything else becomes RGB
    (alpha is dropped). 16-bit grayscale is scaled to 8 bits.
    """
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size  # read from the header, nothing decoded yet
            if width * height > max_pixels:
                raise ImageDecodeError(
                    "too_large",
                    f"image declares {width}x{height} pixels, over the limit of "
                    f"{max_pixels:,} (possible decompression bomb)",
                )
            fmt = probe.format or "unknown"
            probe.load()
            image = probe
            if image.mode in ("I;16", "I;16B", "I", "F"):
                array = np.asarray(image, dtype=np.float64)
                span = float(array.max() - array.min()) or 1.0
                pixels = ((array - array.min()) / span * 255.0).round().astype(np.uint8)
            elif image.mode in ("L", "1", "LA"):
                pixels = np.asarray(image.convert("L"), dtype=np.uint8)
            else:
                pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError("too_large", f"decompression bomb refused: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("corrupt", "not a recognised image file") from exc
    except OSError as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageDecodeError(reason, f"image could not be decoded: {exc}") from exc
    except (ValueError, SyntaxError) as exc:
        raise ImageDecodeError("corrupt", f"image could not be decoded: {exc}") from exc
    return DecodedImage(pixels=np.ascontiguousarray(pixels), sha256=sha256_bytes(data), format=fmt)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_png(pixels: np.ndarray, *, text: Mapping[str, str] | None = None) -> bytes:
    """Encode uint8 pixels, (H, W) or (H, W, 3), as PNG with optional ``tEXt`` chunks."""
    if pixels.dtype != np.uint8:
        raise ValueError(f"pixels must be uint8, got {pixels.dtype}")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(f"pixels must be (H, W) or (H, W, 3), got {pixels.shape}")
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, str(value))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def encode_synthetic_png(pixels: np.ndarray, provenance: Mapping[str, str]) -> bytes:
    """Encode a generated image, marking it synthetic in its PNG metadata."""
    return encode_png(pixels, text={SYNTHETIC_KEY: "true", **provenance})


def read_png_text(data: bytes) -> dict[str, str]:
    """The ``tEXt``/``iTXt`` chunks of a PNG, e.g. to check the synthetic marker."""
    with Image.open(io.BytesIO(data)) as image:
        return {str(k): str(v) for k, v in getattr(image, "text", {}).items()}


def resize_square(pixels: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """Resample to ``size`` x ``size`` (masks use nearest neighbour to stay binary)."""
    image = Image.fromarray(pixels)
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BICUBIC
    return np.asarray(image.resize((size, size), resample=resample), dtype=np.uint8)
