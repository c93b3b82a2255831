"""A CLI search answered by a server already serving the same index, instead of loading the model
and the index in the CLI process again for every call.

`imagefinder serve` records where it listens in `<home>/serve.json` (with its PID, the index and
the encoder setting) and removes the record when it stops. `imagefinder search IMAGE` sends the
image there when the record is for the same index and encoder and its process is alive, and falls
back to searching in-process on any doubt or failure (no record, a stale one, a refused request,
an API key required): the answer is the same either way, only its cost differs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from imagefinder.config import Settings

RECORD = "serve.json"
TIMEOUT_S = 60.0


def _identity(settings: Settings) -> dict[str, str]:
    return {"store": settings.store.uri or str(settings.store_dir.resolve()), "encoder": settings.encoder}


def record_server(settings: Settings, host: str, port: int) -> Path:
    """Written whole or not at all; returns its path, for `forget_server`."""
    settings.home_dir.mkdir(parents=True, exist_ok=True)
    path = settings.home_dir / RECORD
    reachable = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    record = {**_identity(settings), "url": f"http://{reachable}:{port}", "pid": os.getpid()}
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(record))
    os.replace(partial, path)
    return path


def forget_server(path: Path) -> None:
    """Remove the record if it is still this process's (another server may have replaced it)."""
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def search_via_server(
    settings: Settings, image: Path, k: int, where: dict[str, str], views: str | None
) -> dict[str, Any] | None:
    """The server's answer as the CLI prints it ({"model", "copy_threshold", "results"}), or None
    when no suitable server answered."""
    server = _live_record(settings)
    if server is None:
        return None
    import httpx

    params: list[tuple[str, str | int]] = [("k", k)]
    params += [("where", f"{field}={value}") for field, value in where.items()]
    if views is not None:
        params.append(("views", views))
    try:
        answer = httpx.post(
            f"{server['url']}/search",
            params=params,
            files={"file": (image.name, image.read_bytes())},
            timeout=TIMEOUT_S,
        )
    except (httpx.HTTPError, OSError):
        return None
    if answer.status_code != 200:
        return None  # e.g. a k above the server's limit, or an API key required: search here
    body = answer.json()
    return {
        "model": {"name": body["model"]["name"], "version": body["model"]["version"]},
        "copy_threshold": body["copy_threshold"],
        "results": [
            {key: result[key] for key in ("id", "score", "uri", "is_copy")} for result in body["results"]
        ],
    }


def _live_record(settings: Settings) -> dict[str, Any] | None:
    try:
        record = json.loads((settings.home_dir / RECORD).read_text())
        os.kill(int(record["pid"]), 0)  # raises if that process is gone
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if any(record.get(key) != value for key, value in _identity(settings).items()):
        return None
    return record  # type: ignore[no-any-return]
