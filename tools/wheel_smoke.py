"""The wheel as a user meets it: installed with only the core dependencies into a new virtual
environment, then `imagefinder --version`, `demo-data`, `index`, `search`, and `serve` answering
one `POST /search`. A packaging mistake (a static file or the shipped model left out, a module
missing, a dependency used by the core but not declared) fails here.

usage: python tools/wheel_smoke.py dist/imagefinder-*.whl [--keep DIR]
exit 0 when every step passed; otherwise the failing step's output and exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path


def step(name: str, command: list[str], env: dict[str, str], timeout: int = 600) -> str:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        print(f"FAILED {name} (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")  # noqa: T201
        raise SystemExit(1)
    print(f"ok  {name} ({seconds:.1f} s)")  # noqa: T201
    return result.stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def multipart(field: str, path: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{path.name}"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("wheel", type=Path)
    parser.add_argument(
        "--keep", type=Path, help="Work in this folder and keep it (default: a temporary one)."
    )
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="wheel-smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    venv = work / "venv"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("IMAGEFINDER_", "VIRTUAL_ENV", "PYTHONPATH"))
    }
    # Tracking on, as a first run has it: the MLflow run and the encoder registered on `index`.
    env.update({"IMAGEFINDER_HOME": str(work / "home")})
    step("new virtual environment", [sys.executable, "-m", "venv", str(venv)], env)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "--quiet"]
    step("pip install the wheel (core only)", [*pip, "install", str(args.wheel.resolve())], env, timeout=1800)
    python = str(venv / "bin" / "python")
    installed = step(
        "pip list", [python, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"], env
    )
    names = {row["name"].lower() for row in json.loads(installed)}
    heavy = sorted(names & {"torch", "pymilvus", "milvus", "transformers", "ray", "pyarrow"})
    if heavy:
        print(f"FAILED the core pulled in optional packages: {heavy}")  # noqa: T201
        raise SystemExit(1)
    cli = [str(venv / "bin" / "imagefinder")]
    version = step("imagefinder --version", [*cli, "--version"], env)
    if "version" not in version:
        print(f"FAILED --version printed {version!r}")  # noqa: T201
        raise SystemExit(1)
    photos = work / "photos"
    step("imagefinder demo-data", [*cli, "demo-data", str(photos)], env)
    indexed = step("imagefinder index", [*cli, "index", str(photos), "--quiet"], env)
    if "encoder models:/imagefinder-encoder/1" not in indexed:
        print(f"FAILED index did not register the encoder in MLflow:\n{indexed}")  # noqa: T201
        raise SystemExit(1)
    query = sorted(p for p in photos.iterdir() if p.suffix == ".png")[0]
    found = json.loads(step("imagefinder search", [*cli, "search", str(query), "--json"], env))
    if found["results"][0]["id"] != query.name:
        print(f"FAILED search: {query.name} did not find itself first: {found}")  # noqa: T201
        raise SystemExit(1)

    port = free_port()
    log = (work / "serve.log").open("w")
    server = subprocess.Popen(
        [*cli, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as ready:
                    if ready.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                print(f"FAILED serve did not become ready:\n{(work / 'serve.log').read_text()}")  # noqa: T201
                raise SystemExit(1)
            time.sleep(0.5)
        body, content_type = multipart("file", query)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/search?k=3", data=body, headers={"Content-Type": content_type}
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            results = json.loads(answer.read())["results"]
        if results[0]["id"] != query.name:
            print(f"FAILED POST /search: {results}")  # noqa: T201
            raise SystemExit(1)
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode()
        if "<html" not in page.lower():
            print("FAILED GET / did not serve the page")  # noqa: T201
            raise SystemExit(1)
        print(f"ok  serve + POST /search: {query.name} first, score {results[0]['score']}")  # noqa: T201
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    print(f"wheel smoke test passed: {args.wheel.name}, {len(names)} packages installed")  # noqa: T201


if __name__ == "__main__":
    main()
