"""Shared test helpers: image bytes in various formats and a deterministic fake encoder."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from imagefinder.encoders.base import EncoderInfo, l2_normalise


def encode(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def solid(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> Image.Image:
    return Image.new("RGB", size, color)


def gradient(seed: int, size: tuple[int, int] = (96, 80)) -> Image.Image:
    """A distinct, deterministic, non-trivial picture per seed."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 255, size=(4, 4, 3)).astype(np.uint8)
    return Image.fromarray(low).resize(size, Image.Resampling.BILINEAR)


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny valid-looking PNG whose header declares width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    # One compressed row of zeros: the decoder would need width*height*3 bytes to go on.
    body = zlib.compress(b"\x00" * (1 + 3 * min(width, 1024)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


class FakeEncoder:
    """Deterministic stand-in for unit tests of logic: an 8x8 thumbnail as the vector."""

    info = EncoderInfo(name="fake", version="1", dim=192, preprocessing="8x8 thumbnail")
    min_short_side = 8
    registered = None
    embed_texts = None

    def __init__(self) -> None:
        self.calls: list[int] = []

    def preprocess(self, image: Image.Image) -> NDArray[np.float32]:
        small = image.resize((8, 8), Image.Resampling.BILINEAR)
        return (np.asarray(small, dtype=np.float32).reshape(-1) / 255.0) - 0.5

    def embed_arrays(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        self.calls.append(len(batch))
        return l2_normalise(batch.reshape(len(batch), -1).astype(np.float32))
