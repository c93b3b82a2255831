from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagefinder.demo import write_demo_collection
from imagefinder.encoders.lite0 import lite0_encoder
from imagefinder.encoders.onnx_runtime import OnnxEncoder


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ONNX export per test session, in a temporary cache (never the user's home)."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def real_encoder(model_cache: Path) -> OnnxEncoder:
    return lite0_encoder(model_cache)


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real photographs (shipped inside scikit-image), as files in a folder."""
    folder = tmp_path_factory.mktemp("photos")
    written = write_demo_collection(folder)
    assert len(written) >= 12, "scikit-image's bundled photos are missing"
    return folder


QUARTERED = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")


@pytest.fixture(scope="session")
def few_dozen_photos(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """37 real pictures as JPEG files, no two the same: scikit-image's 17 photos and the four
    quarters of five of them (fine-tuning needs a few dozen images to show what it learns)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("few-dozen")
    for path in sorted(photos.iterdir()):
        with Image.open(path) as opened:
            opened.convert("RGB").save(folder / f"{path.stem}.jpg", quality=92)
    for name in QUARTERED:
        with Image.open(photos / name) as opened:
            whole = opened.convert("RGB")
        w, h = whole.size
        for i, (left, top) in enumerate(((0, 0), (w // 2, 0), (0, h // 2), (w // 2, h // 2))):
            quarter = whole.crop((left, top, left + w // 2, top + h // 2))
            quarter.save(folder / f"{Path(name).stem}_q{i}.jpg", quality=92)
    return folder


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Milvus server (the standalone build from the `milvus` PyPI package), started once
    per test session on free ports, in a temporary data folder. Yields its http:// address."""
    from milvus import MilvusServer

    server = MilvusServer()
    server.set_base_dir(str(tmp_path_factory.mktemp("milvus")))
    server.listen_port = _free_port()
    server.start()
    try:
        yield f"http://127.0.0.1:{server.listen_port}"
    finally:
        server.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
