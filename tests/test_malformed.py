"""A generated corpus of malformed and hostile images, each sent to POST /search and POST /images:
every one gets a clear 4xx in the error shape (never a 5xx), and the server keeps serving."""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from imagefinder.api import create_app
from imagefinder.config import ApiSettings
from imagefinder.encoders.onnx_runtime import OnnxEncoder
from imagefinder.images import ImageLimits
from imagefinder.stores.embedded import EmbeddedStore
from imagefinder.wiring import compose_service
from tests.factories import encode, gradient, png_bomb

LIMITS = ImageLimits(max_pixels=25_000_000, max_bytes=2_000_000)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def corpus() -> Iterator[tuple[str, bytes]]:
    """(name, bytes). Names starting with "maybe-" may decode (a file cut only in its trailer,
    bytes flipped inside the pixel data): those must not fail with a 5xx, the rest must be 4xx."""
    rng = random.Random(7)
    photo = gradient(5, (320, 240))
    for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"):
        whole = encode(photo.convert("P") if fmt == "GIF" else photo, fmt)
        for cut in (1, 2, 8, 16, 32, 64, 100, 200, len(whole) // 4, len(whole) // 2):
            if cut < len(whole):
                yield f"truncated-{fmt}-{cut}", whole[:cut]
        yield f"maybe-trailer-cut-{fmt}", whole[:-10]
        noisy = bytearray(whole)
        for _ in range(20):  # flipped bytes after the header
            noisy[rng.randrange(32, len(noisy))] = rng.randrange(256)
        yield f"maybe-bitflips-{fmt}", bytes(noisy)
    yield "zero-bytes", b""
    yield "one-byte", b"\xff"
    for magic in (
        b"\xff\xd8\xff\xe0",
        b"\x89PNG\r\n\x1a\n",
        b"GIF89a",
        b"RIFF\x00\x00\x00\x00WEBP",
        b"BM",
        b"II*\x00",
    ):
        yield f"random-after-magic-{magic[:4]!r}", magic + bytes(rng.randrange(256) for _ in range(4000))
    yield "text", b"just some text\n" * 10
    yield "html", b"<!doctype html><html><body><img src=x></body></html>"
    yield "pdf", b"%PDF-1.7\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF"
    yield "svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="100000" height="100000"><rect/></svg>'
    yield "png-100k-by-100k", png_bomb()
    yield "png-over-our-limit", png_bomb(6000, 6000)
    yield "png-zero-width", png_bomb(0, 10)
    yield "over-size-limit", b"\xff\xd8\xff" + b"0" * (LIMITS.max_bytes + 10)
    bad_crc = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 10, 10, 8, 2, 0, 0, 0))[:-4]
        + b"XXXX"
    )
    yield "png-bad-crc", bad_crc
    yield (
        "png-bad-bit-depth",
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 10, 10, 3, 2, 0, 0, 0)),
    )


# Valid but unusual images that must be accepted (200), not refused.
def accepted() -> Iterator[tuple[str, bytes]]:
    yield "cmyk-jpeg", encode(Image.new("CMYK", (64, 64), (10, 200, 30, 0)), "JPEG")
    yield "16-bit-png", encode(Image.fromarray(np.full((40, 40), 40000, dtype=np.uint16)), "PNG")
    yield "png-named-jpg", encode(gradient(6), "PNG")
    exif = Image.Exif()
    exif[0x010E] = "x" * 60_000  # a huge ImageDescription in EXIF
    yield "jpeg-huge-exif", encode(gradient(7), "JPEG", exif=exif)
    frames = [Image.new("P", (16, 16), i % 256) for i in range(2000)]
    yield "gif-2000-frames", encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=10)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, real_encoder: OnnxEncoder) -> Iterator[TestClient]:
    service = compose_service(real_encoder, EmbeddedStore(tmp_path_factory.mktemp("hostile")), LIMITS)
    service.collection.add_bytes(encode(gradient(1)), "seed")
    with TestClient(create_app(service, ApiSettings()), raise_server_exceptions=False) as test_client:
        yield test_client


def test_every_malformed_input_gets_a_clear_4xx(client: TestClient) -> None:
    import resource

    outcomes: dict[str, int] = {}
    for name, data in corpus():
        for route in ("/search", "/images"):
            response = client.post(route, files={"file": (f"{name}.jpg", data, "image/jpeg")})
            outcomes[f"{route} {name}"] = response.status_code
            assert response.status_code < 500, (route, name, response.status_code, response.text[:300])
            if name.startswith("maybe-") and response.status_code < 400:
                continue
            assert 400 <= response.status_code < 500, (route, name, response.status_code, response.text[:300])
            body = response.json()
            assert set(body["error"]) == {"code", "message"} and body["error"]["message"], (route, name)
    # The server still serves, and the peak memory stayed bounded (the bombs were never decoded).
    assert client.post("/search", json={"id": "seed"}).status_code == 200
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert peak_mb < 4000, peak_mb
    assert len(outcomes) == 180  # 90 inputs, two routes


def test_unusual_but_valid_images_are_accepted(client: TestClient) -> None:
    for name, data in accepted():
        response = client.post("/search", files={"file": (f"{name}.jpg", data, "image/jpeg")})
        assert response.status_code == 200, (name, response.text[:300])
