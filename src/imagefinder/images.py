"""Bytes -> RGB image, with limits. Knows nothing of models or stores.

What a user may hand us is anything: a 16-bit PNG, a CMYK JPEG, a palette GIF with transparency, a
phone photo stored sideways with an EXIF orientation tag, or a 100k x 100k "decompression bomb".
`decode_image` turns each into an upright 8-bit RGB image or raises an `ImageError` saying why.
"""

from __future__ import annotations

import hashlib
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imagefinder.errors import CorruptImageError, ImageTooLargeError, UnsupportedImageError

# Formats we accept. MPO is how Pillow reports many camera JPEGs.
ACCEPTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"})
# The same formats as media types, for clients: what an upload's Content-Type may say.
ACCEPTED_MEDIA_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int = 60_000_000
    max_bytes: int = 50 * 1024 * 1024


# File signatures of the formats we accept, checked on the first bytes of a file or download.
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def sniff_format(head: bytes) -> str | None:
    """The image format `head` (a file's first bytes, 12 or more when available) starts like,
    or None when it is not one we accept."""
    for signature, name in _SIGNATURES:
        if head.startswith(signature):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def looks_like_image(head: bytes) -> bool:
    return sniff_format(head) is not None


def content_hash(data: bytes) -> str:
    """SHA-256 of the file bytes: the identity used to find duplicate content."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file read in blocks (a model file need not be in memory at once)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def decode_image(
    data: bytes,
    limits: ImageLimits,
    source: str = "<upload>",
    min_short_side: int | None = None,
) -> Image.Image:
    """Decode `data` to an upright RGB image.

    `min_short_side` lets JPEG decode at a reduced scale (draft mode: 1/2, 1/4 or 1/8 in the DCT,
    several times faster) while keeping the short side at least that many pixels, which is all the
    encoder's preprocessing needs.
    """
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(
            source, f"file is {len(data)} bytes, limit is {limits.max_bytes}", limits.max_bytes
        )
    if not data:
        raise CorruptImageError(source, "empty file")
    try:
        with warnings.catch_warnings():
            # We enforce our own, lower pixel limit below, before any pixel is decoded.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UnsupportedImageError(source, "not a recognised image format") from None
    except Image.DecompressionBombError:
        # Pillow refuses more than 2 x Image.MAX_IMAGE_PIXELS already while reading the header.
        raise ImageTooLargeError(
            source,
            f"image has more than {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels, limit is {limits.max_pixels}",
            limits.max_pixels,
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise CorruptImageError(source, f"cannot read image header ({exc})") from None

    if image.format not in ACCEPTED_FORMATS:
        raise UnsupportedImageError(source, f"format {image.format} is not supported")
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageTooLargeError(
            source,
            f"image is {width}x{height} = {width * height} pixels, limit is {limits.max_pixels}",
            limits.max_pixels,
        )
    if width < 1 or height < 1:
        raise CorruptImageError(source, f"image has no pixels ({width}x{height})")

    if min_short_side and image.format in ("JPEG", "MPO"):
        scale = min_short_side / min(width, height)
        if scale < 1:
            image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.seek(0)  # animated images: the first frame
            image.load()
            image = ImageOps.exif_transpose(image) or image
            return _to_rgb(image)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(source, str(exc), limits.max_pixels) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise CorruptImageError(source, f"cannot decode image ({exc})") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB. Transparent parts become white, as a viewer shows them."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # Pillow's own convert clips 16/32-bit values at 255 (an all-white image); rescale instead.
        pixels = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16"):
            pixels = pixels / 257.0
        else:
            low, high = float(pixels.min()), float(pixels.max())
            pixels = (pixels - low) * (255.0 / (high - low)) if high > low else pixels * 0
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L")
        mode = "L"
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode != "RGB":
        return image.convert("RGB")
    return image
