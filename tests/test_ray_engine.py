"""`index --engine ray` on a real local Ray cluster, against the single-process indexer: the same
ids, payloads and vectors, the same failures, into the embedded store and a real Milvus server;
an encoder actor killed mid-run; Parquet export -> import on both stores.

Each Ray run here starts its own local Ray (bound to 127.0.0.1) and stops it, as a user's
`imagefinder index --engine ray` does; the kill test joins a head started by `ray start` and
stops it by its own PID."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from tests.factories import encode, gradient, png_bomb
from tests.test_cli import run_cli
from tests.test_milvus import milvus_uri

pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def few_hundred_photos(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 220 real pictures: scikit-image's photos and a dozen edits of each (crops, turns,
    mirrors, colour, scale, JPEG quality), plus a byte-identical copy, a truncated JPEG, a
    decompression bomb and a text file named like an image."""
    folder = tmp_path_factory.mktemp("few-hundred")
    for path in sorted(photos.iterdir()):
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        image.save(folder / f"{path.stem}.jpg", quality=92)
        w, h = image.size
        edits = {
            "crop_tl": image.crop((0, 0, w * 3 // 4, h * 3 // 4)),
            "crop_br": image.crop((w // 4, h // 4, w, h)),
            "crop_centre": image.crop((w // 6, h // 6, w * 5 // 6, h * 5 // 6)),
            "mirror": ImageOps.mirror(image),
            "turn90": image.rotate(90, expand=True),
            "turn180": image.rotate(180),
            "grey": ImageOps.grayscale(image).convert("RGB"),
            "bright": ImageEnhance.Brightness(image).enhance(1.4),
            "contrast": ImageEnhance.Contrast(image).enhance(0.6),
            "small": image.resize((max(w // 3, 64), max(h // 3, 64))),
            "wide": image.resize((w * 3 // 2, h)),
            "q30": image,
        }
        for name, edited in edits.items():
            edited.save(folder / f"{path.stem}_{name}.jpg", quality=30 if name == "q30" else 88)
    shutil.copy(folder / "chelsea.jpg", folder / "chelsea_same_bytes.jpg")
    (folder / "broken.jpg").write_bytes(encode(gradient(1, (300, 300)))[:400])
    (folder / "bomb.png").write_bytes(png_bomb())
    (folder / "notes.jpg").write_text("not an image")
    return folder


def _home(tmp_path: Path, name: str, model_cache: Path) -> Path:
    home = tmp_path / name
    shutil.copytree(model_cache, home / "models")  # the session's ONNX export
    return home


def _exported(home: Path, *store: str) -> dict[str, tuple[np.ndarray, dict[str, object]]]:
    """id -> (vector, payload) of an index, through `export --parquet` (works on every store)."""
    out = home / f"export-{time.monotonic_ns()}"
    run_cli(home, *store, "export", "--parquet", str(out))
    table = pa.concat_tables([pq.read_table(path) for path in sorted(out.glob("*.parquet"))])
    rows = {}
    for image_id, vector, payload in zip(
        table.column("id").to_pylist(),
        table.column("vector").to_pylist(),
        table.column("payload").to_pylist(),
        strict=True,
    ):
        rows[image_id] = (np.asarray(vector, dtype=np.float32), json.loads(payload))
    return rows


def _assert_same_index(
    a: dict[str, tuple[np.ndarray, dict[str, object]]],
    b: dict[str, tuple[np.ndarray, dict[str, object]]],
    ignore: tuple[str, ...] = (),
) -> None:
    assert sorted(a) == sorted(b)
    ignore = ("added_at", *ignore)
    for image_id, (vector, payload) in a.items():
        other_vector, other_payload = b[image_id]
        np.testing.assert_allclose(vector, other_vector, atol=1e-5, err_msg=image_id)
        payload = {k: v for k, v in payload.items() if k not in ignore}
        other_payload = {k: v for k, v in other_payload.items() if k not in ignore}
        assert payload == other_payload, image_id


def _report(home: Path) -> dict[str, object]:
    report = json.loads((home / "index" / "last_index_report.json").read_text())
    keys = ("seen", "indexed", "unchanged", "duplicates", "failed", "failed_by_reason")
    return {key: report[key] for key in keys}


def _problems(home: Path) -> list[tuple[str, str, str]]:
    report = json.loads((home / "index" / "last_index_report.json").read_text())
    return sorted((p["where"], p["category"], p["reason"]) for p in report["problems"])


def test_ray_engine_indexes_a_folder_as_the_single_process_indexer_does(
    tmp_path: Path, few_hundred_photos: Path, model_cache: Path
) -> None:
    local = _home(tmp_path, "local", model_cache)
    ray = _home(tmp_path, "ray", model_cache)
    run_cli(local, "index", str(few_hundred_photos), "--quiet")
    result = run_cli(ray, "index", str(few_hundred_photos), "--quiet", "--engine", "ray")
    assert _report(ray) == _report(local)
    report = _report(ray)
    images = len(list(few_hundred_photos.iterdir()))
    assert report["seen"] == images and report["indexed"] == images - 4 and report["duplicates"] == 1
    assert report["failed_by_reason"] == {"corrupt": 1, "not_an_image": 1, "too_large": 1}
    assert _problems(ray) == _problems(local)
    _assert_same_index(_exported(local), _exported(ray))
    assert f"the index holds {images - 4} images" in result.stdout

    # A second run finds everything unchanged and embeds nothing.
    again = run_cli(ray, "index", str(few_hundred_photos), "--quiet", "--engine", "ray")
    assert f"indexed 0, unchanged {images - 4}" in again.stdout

    # The search over the Ray-built index is the same as over the single-process one.
    query = str(few_hundred_photos / "coffee_crop_tl.jpg")
    found = [json.loads(run_cli(home, "search", query, "-k", "5", "--json").stdout) for home in (local, ray)]
    assert [r["id"] for r in found[0]["results"]] == [r["id"] for r in found[1]["results"]]
    assert found[1]["results"][0]["id"] == "coffee_crop_tl.jpg"


def test_ray_engine_reports_a_csvs_bad_rows_as_the_single_process_indexer_does(
    tmp_path: Path, photos: Path, model_cache: Path
) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: the download fails
    rows = [("url", "id", "tag")]
    rows += [(str(path), path.stem, "photo") for path in sorted(photos.iterdir())]
    rows += [
        ("", "empty-url", "x"),
        (str(photos / "coffee.png"), "coffee", "duplicate id"),
        (str(photos / "rocket.jpg"), "rocket-again", "duplicate url"),
        (str(tmp_path / "missing.jpg"), "missing", "x"),
        (f"http://127.0.0.1:{port}/gone.jpg", "unreachable", "x"),
        ("ftp://example.org/a.jpg", "ftp", "x"),
        (str(photos / "coffee.png"), "../escape", "x"),
    ]
    table = tmp_path / "collection.csv"
    table.write_text("\n".join(",".join(f'"{c}"' for c in row) for row in rows) + "\n")
    local = _home(tmp_path, "local", model_cache)
    ray = _home(tmp_path, "ray", model_cache)
    run_cli(local, "index", str(table), "--quiet")
    result = run_cli(ray, "index", str(table), "--quiet", "--engine", "ray", tracking=True)
    assert _report(ray) == _report(local)
    assert _problems(ray) == _problems(local)
    # The same MLflow run as a single-process one, saying which engine built the index, and the
    # encoder registered.
    run_id = result.stdout.split("mlflow: run ")[1].split(",")[0]
    assert "encoder models:/imagefinder-encoder/1" in result.stdout
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri=f"sqlite:///{ray / 'mlflow.db'}").get_run(run_id)
    assert run.data.params["engine"] == "ray" and run.data.params["ray.address"] == "local"
    assert run.data.metrics["indexed"] == _report(ray)["indexed"]
    assert _report(ray)["failed_by_reason"] == {"fetch": 2, "invalid_row": 3}
    _assert_same_index(_exported(local), _exported(ray))

    # The same rows as Parquet: the same outcome as the CSV.
    parquet = tmp_path / "collection.parquet"
    header, *body = rows
    pq.write_table(pa.table({name: [row[i] for row in body] for i, name in enumerate(header)}), parquet)
    from_parquet = _home(tmp_path, "parquet", model_cache)
    run_cli(from_parquet, "index", str(parquet), "--quiet", "--engine", "ray")
    assert _report(from_parquet) == _report(local)
    # The same images, recorded as coming from the Parquet file instead of the CSV.
    _assert_same_index(_exported(local), _exported(from_parquet), ignore=("collection",))


def test_ray_engine_writes_milvus_as_the_single_process_indexer_does(
    tmp_path: Path, few_hundred_photos: Path, model_cache: Path, milvus_server: str
) -> None:
    home = _home(tmp_path, "home", model_cache)
    stamp = int(time.time())
    local = ("--store", milvus_uri(milvus_server, f"local_{stamp}"))
    ray = ("--store", milvus_uri(milvus_server, f"ray_{stamp}"))
    run_cli(home, *local, "index", str(few_hundred_photos), "--quiet")
    local_report, local_problems = _report(home), _problems(home)
    result = run_cli(home, *ray, "index", str(few_hundred_photos), "--quiet", "--engine", "ray")
    images = len(list(few_hundred_photos.iterdir()))
    assert f"indexed {images - 4}," in result.stdout
    assert (_report(home), _problems(home)) == (local_report, local_problems)
    _assert_same_index(_exported(home, *local), _exported(home, *ray))


def test_export_import_round_trip_on_both_stores(
    tmp_path: Path, photos: Path, model_cache: Path, milvus_server: str
) -> None:
    origin = _home(tmp_path, "origin", model_cache)
    run_cli(origin, "index", str(photos), "--quiet")
    exported = tmp_path / "exported"
    done = run_cli(origin, "export", "--parquet", str(exported))
    count = len(list(photos.iterdir()))
    assert f"exported {count} images" in done.stdout
    schema = pq.read_schema(next(exported.glob("*.parquet")))
    assert schema.field("vector").type == pa.list_(pa.float32(), 1280)
    assert json.loads(schema.metadata[b"imagefinder.encoder"])["encoder_name"] == "efficientnet-lite0"

    embedded = _home(tmp_path, "embedded", model_cache)
    in_milvus = ("--store", milvus_uri(milvus_server, f"imported_{int(time.time())}"))
    for home, store in ((embedded, ()), (embedded, in_milvus)):
        result = run_cli(home, *store, "import", "--parquet", str(exported))
        assert f"imported {count} images" in result.stdout and f"holds {count} images" in result.stdout
        _assert_same_index(_exported(origin), _exported(home, *store))
        query = str(photos / "chelsea.png")
        best = json.loads(run_cli(home, *store, "search", query, "-k", "1", "--json").stdout)["results"][0]
        assert best["id"] == "chelsea.png" and best["is_copy"]

    # Vectors of another encoder are refused, and a folder that is not an export is refused.
    other_model = ("--model", "efficientnet-lite0-fp32")
    refused = run_cli(embedded, *other_model, "import", "--parquet", str(exported), check=False)
    assert refused.returncode == 1 and "was built with encoder" in refused.stderr
    stranger = tmp_path / "stranger.parquet"
    pq.write_table(pa.table({"id": ["a"], "vector": [[0.0] * 1280]}), stranger)
    refused = run_cli(embedded, "import", "--parquet", str(stranger), check=False)
    assert refused.returncode == 1 and "does not say which encoder" in refused.stderr
    # Rows are checked as the indexer checks them: a vector of another length is refused.
    short = tmp_path / "short.parquet"
    table = pq.read_table(next(exported.glob("*.parquet")))
    vectors = [v[:100] for v in table.column("vector").to_pylist()]
    table = table.set_column(1, "vector", pa.array(vectors, pa.list_(pa.float32())))
    pq.write_table(table.replace_schema_metadata(schema.metadata), short)
    refused = run_cli(embedded, "import", "--parquet", str(short), check=False)
    assert refused.returncode == 1 and "the vector has 100 values, not 1280" in refused.stderr
    # An export stopped before its end (no manifest, written last) is refused.
    partial = tmp_path / "partial"
    shutil.copytree(exported, partial)
    (partial / "_imagefinder.json").unlink()
    refused = run_cli(embedded, "import", "--parquet", str(partial), check=False)
    assert refused.returncode == 1 and "incomplete export" in refused.stderr
    # An export never overwrites: a second one into the same folder is refused.
    again = run_cli(origin, "export", "--parquet", str(exported), check=False)
    assert again.returncode == 1 and "not empty" in again.stderr


# -- an encoder actor killed mid-run -------------------------------------------------------------


# Ray's token authentication, as a user joining a secured cluster sets it: a driver given an
# explicit address uses a token only when RAY_AUTH_MODE says so.
RAY_AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """`ray start --head --block` on 127.0.0.1 with 2 CPUs; stopped by its own PID (with --block,
    `ray start` stops the processes it started when it is terminated)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **RAY_AUTH}
    env.pop("RAY_ADDRESS", None)
    ray_cli = Path(sys.executable).parent / "ray"
    # Ray's socket paths must stay under 107 bytes: pytest's temporary folders are too deep.
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    log = (tmp_path / "ray-head.log").open("w")
    head = subprocess.Popen(
        [str(ray_cli), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "Ray runtime started" not in (tmp_path / "ray-head.log").read_text():
            started = head.poll() is None and time.monotonic() < deadline
            assert started, (tmp_path / "ray-head.log").read_text()
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", head.pid
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)  # its own process group, nothing else
            head.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _encoder_actor_pids(head: int) -> list[int]:
    """The encoder actors among the processes of the head this test started (not any other
    Ray on the machine)."""
    parents: dict[int, int] = {}
    titles: dict[int, bytes] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                titles[int(entry.name)] = (entry / "cmdline").read_bytes()
            except (OSError, IndexError, ValueError):
                continue

    def under_head(pid: int) -> bool:
        while pid > 1:
            if pid == head:
                return True
            pid = parents.get(pid, 0)
        return False

    actors = [pid for pid, title in titles.items() if title.startswith(b"ray::_EncoderActor")]
    return [pid for pid in actors if under_head(pid)]


def test_a_killed_encoder_actor_loses_nothing(
    tmp_path: Path, few_hundred_photos: Path, model_cache: Path, ray_head: tuple[str, int]
) -> None:
    address, head_pid = ray_head
    home = _home(tmp_path, "home", model_cache)
    env = {
        **os.environ,
        "IMAGEFINDER_HOME": str(home),
        "IMAGEFINDER_TRACKING__ENABLED": "false",
        "IMAGEFINDER_RAY__CHUNK": "4",  # many small actor calls, so the kill lands mid-run
        **RAY_AUTH,
    }
    command = [sys.executable, "-m", "imagefinder", "index", str(few_hundred_photos), "--quiet", "--verbose"]
    stderr = (tmp_path / "index.stderr").open("w")  # a file: an undrained pipe would block the run
    run = subprocess.Popen(
        [*command, "--engine", "ray", "--ray-address", address],
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    assert run.stdout is not None
    committed: list[str] = []
    killed: list[int] = []
    for line in run.stdout:
        if line.startswith("indexed ") and "," not in line:
            committed.append(line.removeprefix("indexed ").strip())
        if len(committed) >= 20 and not killed:
            killed = _encoder_actor_pids(head_pid)
            assert killed, "no encoder actor process found"
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
        if line.startswith("report:"):
            break
    run.communicate(timeout=300)
    stderr.close()
    errors = (tmp_path / "index.stderr").read_text()
    assert killed, errors
    # Ray restarted the actor and retried its calls: the run itself finished.
    assert run.returncode == 0, errors
    expected = len(list(few_hundred_photos.iterdir())) - 4
    exported = _exported(home)
    assert len(exported) == expected  # every image exactly once
    assert set(committed) <= set(exported)  # no acknowledged row lost
    assert len(committed) == len(set(committed))
    # The restarted actor's vectors are the same encoder's: the index equals a single-process one.
    local = _home(tmp_path, "local", model_cache)
    run_cli(local, "index", str(few_hundred_photos), "--quiet")
    _assert_same_index(_exported(local), exported)
