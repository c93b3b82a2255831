"""MLflow for real: the CLI records index and evaluate runs in a temporary tracking store, the
encoder is registered and loaded back from the registry, and a served index is pinned to it.
Everything is read back through MLflow's own client."""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from imagefinder.api import create_app
from imagefinder.config import ApiSettings, Settings
from imagefinder.encoders.onnx_runtime import OnnxEncoder
from imagefinder.errors import EncoderMismatchError, ModelUnavailableError
from imagefinder.images import ImageLimits, decode_image
from imagefinder.tracking import file_sha256
from imagefinder.wiring import build_service, mlflow_tracker
from tests.factories import encode, gradient
from tests.test_cli import run_cli

MODEL = "imagefinder-encoder"


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory, photos: Path, model_cache: Path) -> Iterator[Path]:
    """A home where `imagefinder index` ran once over real photos plus one broken file."""
    home = tmp_path_factory.mktemp("tracked-home")
    shutil.copytree(model_cache, home / "models")
    collection = home / "collection"
    shutil.copytree(photos, collection)
    (collection / "broken.jpg").write_bytes(encode(gradient(1, (300, 300)))[:400])
    result = run_cli(home, "index", str(collection), "--quiet", tracking=True)
    assert "mlflow: run " in result.stdout and f"models:/{MODEL}/1" in result.stdout
    yield home


def client_for(home: Path):  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{home / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def index_runs(home: Path) -> list:  # type: ignore[type-arg]
    client = client_for(home)
    experiment = client.get_experiment_by_name("imagefinder")
    runs = client.search_runs([experiment.experiment_id], "tags.`imagefinder.kind` = 'index'")
    return sorted(runs, key=lambda run: run.info.start_time)


def test_an_index_run_records_params_metrics_and_artifacts(tracked: Path, photos: Path) -> None:
    (run,) = index_runs(tracked)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["encoder.name"] == "efficientnet-lite0" and params["encoder.version"] == "2-int8-2"
    assert params["encoder.dim"] == "1280" and "centre crop 224" in params["encoder.preprocessing"]
    assert params["store.kind"] == "embedded" and params["store.nprobe"] == "32"
    assert params["source"].endswith("collection") and params["whitening"] == "0.25"
    metrics = run.data.metrics
    assert metrics["indexed"] == len(list(photos.iterdir())) and metrics["failed"] == 1
    assert metrics["failed.corrupt"] == 1 and metrics["images_per_s"] > 0
    assert metrics["stage.embed.seconds"] > 0 and metrics["images_in_index"] == metrics["indexed"]
    assert run.data.tags["index.kind"] == "exact"

    client = client_for(tracked)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"last_index_report.json", "last_index_failures.csv", "encoder"} <= artifacts
    failures = Path(client.download_artifacts(run.info.run_id, "last_index_failures.csv"))
    rows = list(csv.DictReader(failures.open()))
    assert [(r["category"], Path(r["where"]).name) for r in rows] == [("corrupt", "broken.jpg")]
    report = json.loads(
        Path(client.download_artifacts(run.info.run_id, "last_index_report.json")).read_text()
    )
    assert report["indexed"] == metrics["indexed"]


def test_every_experiment_keeps_its_artifacts_in_the_data_directory(tracked: Path) -> None:
    """MLflow's own "Default" experiment included: not `./mlruns` of the folder `index` ran in."""
    experiments = client_for(tracked).search_experiments()
    assert {e.name for e in experiments} == {"Default", "imagefinder"}
    root = (tracked / "mlartifacts").resolve().as_uri()
    assert all(e.artifact_location.startswith(root) for e in experiments), experiments


def test_the_encoder_is_registered_once_and_the_index_records_its_version(
    tracked: Path, photos: Path
) -> None:
    client = client_for(tracked)
    (version,) = client.search_model_versions(f"name = '{MODEL}'")
    (first,) = index_runs(tracked)
    onnx = tracked / "models" / "efficientnet-lite0-v2-int8-2.onnx"
    assert str(version.version) == "1" and version.run_id == first.info.run_id
    assert (
        version.tags["sha256"] == file_sha256(onnx) and version.tags["encoder_name"] == "efficientnet-lite0"
    )

    info = json.loads(run_cli(tracked, "info", "--json", tracking=True).stdout)["mlflow"]
    assert info["model_uri"] == f"models:/{MODEL}/1" and info["index_run_id"] == first.info.run_id

    # A second run that adds an image: a new run, the same registered version.
    extra = tracked / "collection" / "extra.png"
    extra.write_bytes(encode(gradient(7, (320, 240)), "PNG"))
    try:
        run_cli(tracked, "index", str(tracked / "collection"), "--quiet", tracking=True)
    finally:
        extra.unlink()
    runs = index_runs(tracked)
    assert len(runs) == 2 and runs[1].data.metrics["indexed"] == 1
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 1
    info = json.loads(run_cli(tracked, "info", "--json", tracking=True).stdout)["mlflow"]
    assert info["index_run_id"] == runs[1].info.run_id and info["model_registry_version"] == "1"

    listing = run_cli(tracked, "runs", tracking=True).stdout
    assert runs[1].info.run_id in listing and "v1  efficientnet-lite0 v2" in listing


def test_the_registered_model_embeds_like_the_encoder(
    tracked: Path, photos: Path, real_encoder: OnnxEncoder
) -> None:
    import mlflow.pyfunc

    client = client_for(tracked)
    loaded = mlflow.pyfunc.load_model(client.get_model_version_download_uri(MODEL, "1"))
    images = [(photos / name).read_bytes() for name in ("coffee.png", "rocket.jpg")]
    predicted = np.asarray(loaded.predict(images), dtype=np.float32)
    direct = real_encoder.embed_arrays(
        np.stack(
            [
                real_encoder.preprocess(decode_image(data, ImageLimits(), "q", real_encoder.min_short_side))
                for data in images
            ]
        )
    )
    assert predicted.shape == (2, 1280)
    np.testing.assert_allclose(predicted, direct, atol=1e-5)


def test_a_version_registered_before_crop_only_keeps_its_preprocessing(
    tmp_path: Path, photos: Path, real_encoder: OnnxEncoder
) -> None:
    """Versions registered before the centre crop was resampled on its own have no `crop_only`
    in their spec: they resize the whole image, then crop, as when their index was built."""
    from imagefinder.encoders.preprocess import resize_crop_normalise
    from imagefinder.encoders.pyfunc import encoder_from_files, model_files

    model_files(real_encoder, tmp_path)
    described = json.loads((tmp_path / "encoder.json").read_text())
    assert described["spec"]["crop_only"] is True  # what a version registered now records
    del described["spec"]["crop_only"]
    (tmp_path / "encoder.json").write_text(json.dumps(described))
    old = encoder_from_files(real_encoder.model_path, tmp_path / "encoder.json", None)
    with Image.open(photos / "astronaut.png") as opened:
        image = opened.convert("RGB").resize((700, 1300))
    settings = {"short_side": 256, "crop": 224, "mean": 127.0, "std": 128.0}
    resized_then_cropped = resize_crop_normalise(image, **settings, crop_only=False)  # type: ignore[arg-type]
    assert np.array_equal(old.preprocess(image), resized_then_cropped)
    assert not np.array_equal(real_encoder.preprocess(image), resized_then_cropped)  # rounding


def test_serving_a_registered_version_pins_the_model(tracked: Path, photos: Path) -> None:
    client = client_for(tracked)
    client.set_registered_model_alias(MODEL, "production", "1")
    for uri in (f"models:/{MODEL}/1", f"models:/{MODEL}@production"):
        service = build_service(Settings(home=tracked, encoder=uri))
        try:
            assert service.search_bytes((photos / "coffee.png").read_bytes(), 1)[0].id == "coffee.png"
            with TestClient(create_app(service, ApiSettings())) as http:
                health = http.get("/health").json()
            assert health["model"] == {"name": "efficientnet-lite0", "version": "2-int8-2"}
            assert health["mlflow"]["model_uri"] == f"models:/{MODEL}/1"
            assert health["mlflow"]["served_model_uri"] == f"models:/{MODEL}/1"
            assert health["mlflow"]["index_run_id"] == index_runs(tracked)[-1].info.run_id
        finally:
            service.close()
    with pytest.raises(ModelUnavailableError, match="models:/imagefinder-encoder/9"):
        build_service(Settings(home=tracked, encoder=f"models:/{MODEL}/9"))


def test_a_different_registered_model_is_refused(tracked: Path, tmp_path: Path) -> None:
    """Version 2: a tiny Hugging Face ViT, registered for real; the Lite0 index refuses it."""
    from imagefinder.encoders.huggingface import load_hf_encoder
    from tests.hf_models import build_tiny_models

    os.environ["HF_HUB_OFFLINE"] = "1"
    vit = build_tiny_models(tmp_path / "hf")["vit"]
    encoder = load_hf_encoder(str(vit), tmp_path / "cache")
    tracker = mlflow_tracker(Settings(home=tracked))
    with tracker.run("register", "tiny vit") as run:
        record = tracker.register_encoder(encoder, run)
    assert record is not None and record.version == "2"
    with pytest.raises(EncoderMismatchError, match="was built with encoder efficientnet-lite0"):
        build_service(Settings(home=tracked, encoder=f"models:/{MODEL}/2"))
    # The registered ViT itself loads and embeds like the encoder it was made from.
    loaded = tracker.load_encoder(f"models:/{MODEL}/2")
    image = decode_image(encode(gradient(3, (200, 160))), ImageLimits(), "q", 32)
    np.testing.assert_allclose(
        loaded.embed_arrays(loaded.preprocess(image)[None]),
        encoder.embed_arrays(encoder.preprocess(image)[None]),
        atol=1e-5,
    )


def test_an_evaluate_run_is_linked_to_the_index_it_measured(
    tracked: Path, photos: Path, tmp_path: Path
) -> None:
    queries = tmp_path / "queries"
    queries.mkdir()
    truth = tmp_path / "truth.csv"
    names = sorted(p.name for p in photos.iterdir())[:4]
    for name in names:
        shutil.copy(photos / name, queries / name)
    truth.write_text("query_file,expected_collection_file\n" + "".join(f"{n},{n}\n" for n in names))
    result = run_cli(
        tracked,
        "evaluate",
        "--use-index",
        "--queries",
        str(queries),
        "--ground-truth",
        str(truth),
        tracking=True,
    )
    assert "mlflow: run " in result.stdout
    client = client_for(tracked)
    experiment = client.get_experiment_by_name("imagefinder")
    (run,) = client.search_runs([experiment.experiment_id], "tags.`imagefinder.kind` = 'evaluate'")
    assert run.data.metrics["recall_at_1"] == 1.0 and run.data.metrics["mAP"] == 1.0
    assert run.data.tags["imagefinder.index_run_id"] == index_runs(tracked)[-1].info.run_id
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "report.html", "precision_recall.svg"} <= artifacts


def test_tracking_can_be_switched_off(tmp_path: Path, photos: Path, model_cache: Path) -> None:
    shutil.copytree(model_cache, tmp_path / "models")
    result = run_cli(tmp_path, "index", str(photos), "--quiet", tracking=False)
    assert "mlflow:" not in result.stdout
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlartifacts").exists()


def test_a_run_whose_process_was_killed_is_marked_failed_by_the_next(
    tmp_path: Path, few_dozen_photos: Path, model_cache: Path
) -> None:
    """SIGKILL leaves an MLflow run RUNNING; the next run of this machine marks it FAILED."""
    import shutil
    import sqlite3

    from tests.test_finetune_cli import run
    from tests.test_finetune_kill import kill_when

    home = tmp_path / "home"
    shutil.copytree(model_cache, home / "models")

    def index_running(home: Path) -> bool:
        try:
            with sqlite3.connect(home / "mlflow.db", timeout=1) as db:
                found = db.execute(
                    "SELECT count(*) FROM runs WHERE name LIKE 'index%' AND status = 'RUNNING'"
                )
                return bool(found.fetchone()[0])
        except sqlite3.Error:
            return False

    assert kill_when(home, index_running, ["index", str(few_dozen_photos), "--quiet"])
    with sqlite3.connect(home / "mlflow.db") as db:
        assert db.execute("SELECT status FROM runs").fetchall() == [("RUNNING",)]
    run(home, "index", str(few_dozen_photos), "--quiet")
    with sqlite3.connect(home / "mlflow.db") as db:
        statuses = db.execute("SELECT status FROM runs ORDER BY start_time").fetchall()
    assert statuses == [("FAILED",), ("FINISHED",)]


_LOAD_AND_PREDICT = """
import json, sys
import mlflow.pyfunc
model = mlflow.pyfunc.load_model(sys.argv[1])
print(json.dumps(model.predict([open(path, "rb").read() for path in sys.argv[2:]])))
"""


def test_the_registered_model_loads_in_a_clean_environment(
    tracked: Path, photos: Path, tmp_path: Path
) -> None:
    """Plain MLflow in a virtual environment with only what the model declares (no ImageFinder)
    loads the registered version and gives the index's vectors; its MLmodel records no path of
    the machine that built it."""
    import subprocess
    import sys

    import yaml

    from imagefinder.stores.embedded import EmbeddedStore

    model_dir = Path(client_for(tracked).get_model_version_download_uri(MODEL, "1").removeprefix("file://"))
    flavor = yaml.safe_load((model_dir / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["model_code_path"] == "pyfunc_entry.py"
    assert all(not Path(a["uri"]).is_absolute() for a in flavor["artifacts"].values())
    requirements = (model_dir / "requirements.txt").read_text().split()
    assert requirements and not any(line.startswith("imagefinder") for line in requirements)

    venv = tmp_path / "clean"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*install, "-r", str(model_dir / "requirements.txt")], check=True, capture_output=True)
    assert subprocess.run([str(python), "-c", "import imagefinder"], capture_output=True).returncode == 1

    names = ["coffee.png", "rocket.jpg"]
    out = subprocess.run(
        [str(python), "-c", _LOAD_AND_PREDICT, str(model_dir), *(str(photos / n) for n in names)],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    predicted = np.asarray(json.loads(out.stdout.strip().splitlines()[-1]), dtype=np.float32)
    store = EmbeddedStore(tracked / "index")
    try:
        indexed = np.stack([store.get_vector(name) for name in names])
    finally:
        store.close()
    # The index keeps float16 vectors: equal to that precision.
    np.testing.assert_allclose(predicted, indexed, atol=2e-3)
