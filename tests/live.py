"""A real `imagefinder serve` (uvicorn) on 127.0.0.1 over an index of real photos, for tests that
talk to the server as a client or a browser would."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def percentile(values: list[float], q: float) -> float:
    """The q-quantile of latencies (nearest rank), for the tests and benchmarks that report them."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(environment: dict[str, str], timeout_s: float = 120) -> Iterator[str]:
    """Run `imagefinder serve` on a free port with `environment`, wait for /ready (model and index
    loaded), yield the base URL, stop the server after."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "imagefinder", "serve", "--port", str(port)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not become ready within {timeout_s:.0f} s")
            time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


@contextmanager
def live_server(home: Path, photos: Path, model_cache: Path, **env: str) -> Iterator[str]:
    """Index `photos` into `home` with the CLI, serve it, yield the base URL, stop it after."""
    shutil.copytree(model_cache, home / "models", dirs_exist_ok=True)
    environment = {
        **os.environ,
        "IMAGEFINDER_HOME": str(home),
        "IMAGEFINDER_TRACKING__ENABLED": "false",
        **env,
    }
    subprocess.run(
        [sys.executable, "-m", "imagefinder", "index", str(photos), "--quiet"],
        env=environment,
        check=True,
        capture_output=True,
    )
    with serving(environment, timeout_s=60) as base:
        yield base
