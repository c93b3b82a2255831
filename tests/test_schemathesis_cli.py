"""The schemathesis CLI, as a user of the API would run it, against a real `imagefinder serve`:
every check (positive and negative data, status codes and headers the document declares,
response schemas, stateful links between operations), a fixed seed, and not one finding."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.http_server import ImageServer
from tests.live import live_server

REPO = Path(__file__).resolve().parents[1]


def test_the_schemathesis_cli_finds_nothing(
    tmp_path: Path, photos: Path, model_cache: Path, real_encoder: object
) -> None:
    """`real_encoder` fills `model_cache` with the exported model, which the server reuses."""
    image = (photos / "rocket.jpg").read_bytes()
    # URL queries fetch a real image from this local server (see tests/schemathesis_hooks.py).
    with (
        ImageServer({"query.jpg": image}) as images,
        live_server(
            tmp_path / "home", photos, model_cache, IMAGEFINDER_API__ALLOW_PRIVATE_URLS="true"
        ) as base,
    ):
        environment = {
            **os.environ,
            "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
            "PYTHONPATH": str(REPO),
            "ST_IMAGE_URL": f"{images.base}/img/query.jpg",
        }
        report = REPO / "test-artifacts" / "schemathesis"
        command = [
            str(Path(sys.executable).with_name("st")),
            "--config-file",
            str(REPO / "tests" / "schemathesis.toml"),
            "run",
            f"{base}/openapi.json",
            "--checks",
            "all",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--seed",
            "1",
            "--max-examples",
            "100",
            "--workers",
            "1",
            "--report",
            "junit",
            "--report-dir",
            str(report),
        ]
        result = subprocess.run(
            command, env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=900
        )
    summary = result.stdout[-6000:]
    assert result.returncode == 0, summary
    assert "No issues found" in summary or " passed" in summary, summary
