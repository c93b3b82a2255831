"""The real default encoder (EfficientNet-Lite0 via ONNX Runtime) on real photographs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagefinder.encoders import build_encoder
from imagefinder.encoders.base import embed_images
from imagefinder.encoders.lite0 import LITE0_INFO, LITE0_INT8_INFO, ensure_lite0_int8_onnx, ensure_lite0_onnx
from imagefinder.encoders.onnx_runtime import OnnxEncoder
from imagefinder.images import ImageLimits
from imagefinder.service import QueryViews
from imagefinder.sources import FolderSource
from imagefinder.stores.embedded import EmbeddedStore
from imagefinder.wiring import compose_service

LIMITS = ImageLimits()


def edited_copy(path: Path, edit: str) -> bytes:
    image = Image.open(path).convert("RGB")
    w, h = image.size
    if edit == "crop":
        image = image.crop((int(w * 0.08), int(h * 0.06), int(w * 0.95), int(h * 0.9)))
    elif edit == "rotate":
        image = image.rotate(7, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=(0, 0, 0))
    elif edit == "recompress":
        image = image.resize((w // 2, h // 2))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=40 if edit == "recompress" else 85)
    return buffer.getvalue()


def test_vectors_are_unit_length_and_deterministic(real_encoder: OnnxEncoder, photos: Path) -> None:
    images = [Image.open(p).convert("RGB") for p in sorted(photos.iterdir())[:4]]
    first = embed_images(real_encoder, images)
    again = embed_images(real_encoder, images[::-1])[::-1]
    assert first.shape == (4, LITE0_INFO.dim) and first.dtype == np.float32
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert np.allclose(first, again, atol=1e-5)  # batch position does not matter
    # Different photos get clearly different vectors.
    assert float(first[0] @ first[1]) < 0.9


def test_onnx_file_is_exported_once_and_reused(model_cache: Path, real_encoder: OnnxEncoder) -> None:
    path = ensure_lite0_onnx(model_cache)
    stamp = path.stat().st_mtime_ns
    assert ensure_lite0_onnx(model_cache) == path and path.stat().st_mtime_ns == stamp
    assert path.name == f"efficientnet-lite0-v{LITE0_INFO.version}.onnx"
    int8 = ensure_lite0_int8_onnx(model_cache)
    assert real_encoder.model_path == int8 and real_encoder.info == LITE0_INT8_INFO  # the default
    assert int8.name == f"efficientnet-lite0-v{LITE0_INT8_INFO.version}.onnx"
    assert int8.stat().st_size < path.stat().st_size / 3


def test_int8_vectors_match_the_fp32_ones(model_cache: Path, real_encoder: OnnxEncoder, photos: Path) -> None:
    """Quantisation moves each vector a little, never so far that a photo's int8 vector is nearer
    another photo's fp32 vector than its own."""
    fp32 = build_encoder("efficientnet-lite0-fp32", model_cache)
    assert fp32.info == LITE0_INFO and fp32.info != real_encoder.info
    images = [Image.open(p).convert("RGB") for p in sorted(photos.iterdir())]
    quantised, reference = embed_images(real_encoder, images), embed_images(fp32, images)
    similarity = quantised @ reference.T
    assert np.diag(similarity).min() > 0.9  # measured: 0.94 (a texture) to 0.997
    assert (similarity.argmax(axis=1) == np.arange(len(images))).all()


@pytest.mark.parametrize("edit", ["crop", "rotate", "recompress"])
def test_edited_copy_finds_its_original_first(
    tmp_path: Path, real_encoder: OnnxEncoder, photos: Path, edit: str
) -> None:
    service = compose_service(real_encoder, EmbeddedStore(tmp_path / "index"), LIMITS)
    report = service.index(FolderSource(photos, LIMITS.max_bytes))
    assert report.indexed == len(list(photos.iterdir())) and report.failed == 0
    misses = []
    for path in sorted(photos.iterdir()):
        results = service.search_bytes(edited_copy(path, edit), k=3)
        if results[0].id != path.name:
            misses.append((path.name, [(r.id, round(r.score, 3)) for r in results]))
    assert misses == []


def test_adaptive_views_find_turned_and_pasted_copies(
    tmp_path: Path, real_encoder: OnnxEncoder, photos: Path
) -> None:
    """A photo mirrored and turned 90 degrees, and the photo shrunk into a corner of a bigger
    noisy picture: the plain query misses most; the second pass finds them and flags the copy."""
    modes: tuple[QueryViews, ...] = ("single", "adaptive")
    services = {
        mode: compose_service(real_encoder, EmbeddedStore(tmp_path / mode), LIMITS, query_views=mode)
        for mode in modes
    }
    for service in services.values():
        service.index(FolderSource(photos, LIMITS.max_bytes))
    rng = np.random.default_rng(3)
    found: dict[str, int] = {"single": 0, "adaptive": 0}
    flagged = 0
    paths = sorted(photos.iterdir())
    for number, path in enumerate(paths):
        photo = Image.open(path).convert("RGB")
        turned = photo.transpose(Image.Transpose.TRANSPOSE)
        noise = rng.integers(0, 255, (photo.height * 2, photo.width * 2, 3), dtype=np.uint8)
        pasted = Image.fromarray(noise)
        corner = ((number % 2) * photo.width, (number // 2 % 2) * photo.height)  # a different corner each
        pasted.paste(photo, corner)
        for copy in (turned, pasted):
            buffer = io.BytesIO()
            copy.save(buffer, "JPEG", quality=85)
            for mode, service in services.items():
                top = service.search_bytes(buffer.getvalue(), k=1)[0]
                found[mode] += top.id == path.name
                flagged += mode == "adaptive" and top.id == path.name and top.is_copy
    assert found["adaptive"] == 2 * len(paths), found
    assert found["single"] < found["adaptive"], found
    assert flagged >= 0.9 * 2 * len(paths)


def test_lanes_give_the_vectors_of_one_session_in_batch_order(model_cache: Path, photos: Path) -> None:
    """A batch cut into chunks over 2 single-thread sessions comes back whole and in order, equal
    to what one session computes, also while other threads use the same lanes."""
    from concurrent.futures import ThreadPoolExecutor

    from imagefinder.encoders.lite0 import lite0_encoder

    lanes, single = lite0_encoder(model_cache, lanes=2), lite0_encoder(model_cache, lanes=1)
    chunks: list[int] = []
    on_a_lane = lanes._on_a_lane
    lanes._on_a_lane = lambda chunk: chunks.append(len(chunk)) or on_a_lane(chunk)  # type: ignore[method-assign]
    images = [Image.open(p).convert("RGB") for p in sorted(photos.iterdir())]
    pixels = np.stack([lanes.preprocess(image) for image in images])  # 17 photos: chunks 8, 8, 1
    expected = single.embed_arrays(pixels)
    assert np.allclose(lanes.embed_arrays(pixels), expected, atol=1e-5)
    assert chunks == [8, 8, 1]  # the lanes ran it, in chunks of at most 8
    assert np.allclose(lanes.embed_arrays(pixels[:1]), expected[:1], atol=1e-5) and len(chunks) == 3
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda start: lanes.embed_arrays(pixels[start:]), range(8)))
    for start, vectors in enumerate(results):
        assert np.allclose(vectors, expected[start:], atol=1e-5)
    # Images preprocessed on the lanes too: the same vectors, in order.
    assert np.allclose(embed_images(lanes, images[:7]), expected[:7], atol=1e-5)
    assert embed_images(lanes, []).shape == (0, LITE0_INFO.dim)


def test_the_int8_file_is_reused_without_the_fp32_one_and_stale_parts_go(
    tmp_path: Path, model_cache: Path, real_encoder: OnnxEncoder
) -> None:
    """A cache holding only the int8 model (copied to a serving machine) needs no fp32 export and
    no torch; a partial file left by a build killed midway is removed by the next build."""
    from imagefinder.encoders.lite0 import lite0_encoder

    serving = tmp_path / "serving"
    serving.mkdir()
    int8 = ensure_lite0_int8_onnx(model_cache)
    (serving / int8.name).write_bytes(int8.read_bytes())
    assert lite0_encoder(serving).model_path == serving / int8.name
    assert sorted(p.name for p in serving.iterdir()) == [int8.name]

    building = tmp_path / "building"
    building.mkdir()
    fp32 = ensure_lite0_onnx(model_cache)
    (building / fp32.name).write_bytes(fp32.read_bytes())
    (building / f"{int8.stem}.99999.tmp").write_bytes(b"half a model")
    assert ensure_lite0_int8_onnx(building).read_bytes() == int8.read_bytes()  # deterministic
    assert not list(building.glob("*.tmp"))
