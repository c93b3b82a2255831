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


def _identity(settings: Settings) -> dict[str, Any]:
    """What makes a search's answer: the index, the encoder setting (and whether it was chosen,
    which decides whether a fine-tuned index's own model serves it) and the approximate index's
    probes. A server is asked only when all are the same."""
    return {
        "store": settings.store.uri or str(settings.store_dir.resolve()),
        "encoder": settings.encoder,
        "encoder_chosen": "encoder" in settings.model_fields_set,
        "nprobe": settings.store.nprobe,
    }


def record_server(settings: Settings, host: str, port: int) -> Path | None:
    """Written whole or not at all; returns its path, for `forget_server`, or None when it could
    not be written (a read-only home: the record is only a speed-up) or another live server's
    record is there."""
    path = settings.home_dir / RECORD
    if _alive(path):
        return None  # another server of this home is running: its record stays
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    reachable = f"[{host}]" if ":" in host else host
    record = {**_identity(settings), "url": f"http://{reachable}:{port}", "pid": os.getpid()}
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        settings.home_dir.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(record))
        os.replace(partial, path)
    except OSError:
        return None
    return path


def forget_server(path: Path | None) -> None:
    """Remove the record if it is still this process's (another server may have replaced it)."""
    if path is None:
        return
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

    # This command's own views setting, not the server's default: the same answer as in-process.
    params: list[tuple[str, str | int]] = [("k", k), ("views", views or settings.query_views)]
    params += [("where", f"{field}={value}") for field, value in where.items()]
    try:
        answer = httpx.post(
            f"{server['url']}/search",
            params=params,
            files={"file": (image.name, image.read_bytes())},
            timeout=TIMEOUT_S,
        )
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
    except Exception:  # noqa: BLE001 - whatever went wrong with the server, search here instead
        return None


def _alive(path: Path) -> dict[str, Any] | None:
    """The record at `path` if the process that wrote it is still running."""
    try:
        record = json.loads(path.read_text())
        os.kill(int(record["pid"]), 0)  # raises if that process is gone
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record  # type: ignore[no-any-return]


def _live_record(settings: Settings) -> dict[str, Any] | None:
    record = _alive(settings.home_dir / RECORD)
    if record is None:
        return None
    if any(record.get(key) != value for key, value in _identity(settings).items()):
        return None
    return record  # type: ignore[no-any-return]
