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
