"""SIGKILL the *server* while clients add and delete images through the API, restart it on the
same data directory: it comes up, and every add or delete it acknowledged before the kill holds.
Two kill points in `make test`, six more in `make test-slow`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.factories import encode, gradient
from tests.live import free_port, serving


def start_server(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "imagefinder", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return process, base
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not become ready")


def kill_during_writes(home: Path, photos: Path, model_cache: Path, delay_s: float, seed: int) -> None:
    shutil.copytree(model_cache, home / "models", dirs_exist_ok=True)
    env = {**os.environ, "IMAGEFINDER_HOME": str(home), "IMAGEFINDER_TRACKING__ENABLED": "false"}
    subprocess.run(
        [sys.executable, "-m", "imagefinder", "index", str(photos), "--quiet"], env=env, check=True
    )
    process, base = start_server(env)
    added: set[str] = set()
    deleted: set[str] = set()
    attempted_delete: set[str] = set()
    unacknowledged: set[str] = set()

    def writer(worker: int) -> None:
        n = 0
        with httpx.Client(base_url=base, timeout=30) as client:
            while True:
                n += 1
                try:
                    if n % 4 == 0 and added - deleted - attempted_delete:
                        victim = sorted(added - deleted - attempted_delete)[0]
                        attempted_delete.add(victim)
                        if client.delete(f"/images/{victim}").status_code == 204:
                            deleted.add(victim)
                        continue
                    image_id = f"w{worker}/{seed}-{n}"
                    unacknowledged.add(image_id)
                    data = encode(gradient(seed * 1_000_000 + worker * 10_000 + n, (200, 150)))
                    response = client.post("/images", files={"file": ("a.jpg", data)}, data={"id": image_id})
                    if response.status_code == 201:
                        added.add(image_id)
                except httpx.TransportError:
                    return  # the server is gone

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(delay_s)
    process.send_signal(signal.SIGKILL)
    process.wait()
    for thread in threads:
        thread.join(timeout=60)
    assert added, "nothing was acknowledged before the kill: raise the delay"

    with serving(env) as again, httpx.Client(base_url=again, timeout=30) as client:
        for image_id in added - attempted_delete:
            assert client.get(f"/images/{image_id}").status_code == 200, image_id
        for image_id in deleted:
            assert client.get(f"/images/{image_id}").status_code == 404, image_id
        images = client.get("/health").json()["images"]
        originals = len(list(photos.iterdir()))
        # In flight at the kill (sent, not acknowledged): may or may not have landed.
        maybe = len(unacknowledged - added) + len(attempted_delete - deleted)
        present = len(added - attempted_delete)
        assert originals + present <= images <= originals + present + maybe


@pytest.mark.parametrize("delay_s", [2.0, 4.0])
def test_server_killed_while_writing_keeps_acknowledged_writes(
    tmp_path: Path, photos: Path, model_cache: Path, delay_s: float
) -> None:
    kill_during_writes(tmp_path, photos, model_cache, delay_s, seed=int(delay_s * 10))


@pytest.mark.slow
@pytest.mark.parametrize("delay_s", [0.7, 1.3, 2.9, 3.7, 5.3, 7.1])
def test_server_killed_at_more_points(
    tmp_path: Path, photos: Path, model_cache: Path, delay_s: float
) -> None:
    kill_during_writes(tmp_path, photos, model_cache, delay_s, seed=int(delay_s * 10))
