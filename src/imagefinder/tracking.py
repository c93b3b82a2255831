"""MLflow as the record of every index build and evaluation, and the registry of encoders.

`MlflowTracker` writes runs (params, metrics, artifacts) to a tracking store, by default a SQLite
file in the data directory (`<home>/mlflow.db`, artifacts under `<home>/mlartifacts`), or to any
`MLFLOW_TRACKING_URI`. It registers the encoder that built an index as a pyfunc model version
(one version per distinct ONNX file, found again by its SHA-256) and loads a version back for
`--model models:/<name>/<version or @alias>`. `NoTracker` is the opt-out: it records nothing.

mlflow is imported only inside this module's functions (and `encoders.pyfunc`).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from imagefinder.errors import ModelUnavailableError, TrackingError
from imagefinder.images import file_sha256
from imagefinder.processes import process_alive

log = logging.getLogger(__name__)

MODEL_URI_PREFIX = "models:/"


@dataclass(frozen=True)
class ModelRecord:
    """A registered encoder version."""

    name: str
    version: str
    run_id: str
    sha256: str

    @property
    def uri(self) -> str:
        return f"{MODEL_URI_PREFIX}{self.name}/{self.version}"


class TrackedRun(Protocol):
    run_id: str | None

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None: ...

    def log_artifact(self, path: Path, folder: str | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...


class Tracker(Protocol):
    enabled: bool

    def run(self, kind: str, name: str) -> Any:
        """Context manager yielding a `TrackedRun`; a run whose block raises is marked FAILED."""
        ...

    def register_encoder(
        self, encoder: Any, run: TrackedRun, tags: Mapping[str, str] | None = None
    ) -> ModelRecord | None: ...


class _NoRun:
    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        pass

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass


class NoTracker:
    """Tracking switched off (`IMAGEFINDER_TRACKING__ENABLED=false`)."""

    enabled = False

    @contextmanager
    def run(self, kind: str, name: str) -> Iterator[TrackedRun]:
        yield _NoRun()

    def register_encoder(
        self, encoder: Any, run: TrackedRun, tags: Mapping[str, str] | None = None
    ) -> ModelRecord | None:
        return None


class _MlflowRun:
    def __init__(self, client: Any, run_id: str) -> None:
        self._client = client
        self.run_id: str | None = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        # MLflow caps a value at 6000 characters; ours are names and numbers.
        self._client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = _now_ms()
        finite = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        self._client.log_batch(
            self.run_id, metrics=[Metric(metric_key(k), v, now, step) for k, v in finite.items()]
        )

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self._client.log_artifact(self.run_id, str(path), folder)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self._client.set_tag(self.run_id, key, value)


class MlflowTracker:
    enabled = True

    def __init__(self, uri: str, artifact_root: Path | None, experiment: str, registered_model: str) -> None:
        self.uri = uri
        self._artifact_root = artifact_root
        self._experiment = experiment
        self.registered_model = registered_model
        self._client_instance: Any = None

    def _client(self) -> Any:
        if self._client_instance is None:
            # MLflow's INFO lines (database migrations) and progress bars would drown the CLI's
            # own output; warnings still show.
            logging.getLogger("mlflow").setLevel(logging.WARNING)
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            try:
                from mlflow.tracking import MlflowClient

                self._create_local_store()
                self._client_instance = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
            except Exception as exc:  # noqa: BLE001  (any backend failure: say which URI)
                raise TrackingError(f"cannot open the MLflow tracking store {self.uri}: {exc}") from exc
        return self._client_instance

    def _create_local_store(self) -> None:
        """A new SQLite store gets MLflow's "Default" experiment, whose artifacts would go to
        `./mlruns` in whatever folder the command ran from: create it here with the data
        directory's artifact folder instead."""
        database = Path(self.uri.removeprefix("sqlite:///"))
        if self._artifact_root is None or not self.uri.startswith("sqlite:///") or database.exists():
            return
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        SqlAlchemyStore(self.uri, self._artifact_root.resolve().as_uri())

    def experiment_id(self) -> str:
        client = self._client()
        found = client.get_experiment_by_name(self._experiment)
        if found is not None:
            return str(found.experiment_id)
        location = self._artifact_root.resolve().as_uri() if self._artifact_root else None
        return str(client.create_experiment(self._experiment, artifact_location=location))

    @contextmanager
    def run(self, kind: str, name: str) -> Iterator[TrackedRun]:
        """Runs record the process that runs them, so that the next run can mark one whose
        process was killed (SIGKILL leaves no chance to) as failed instead of running forever."""
        client = self._client()
        owner = {"imagefinder.host": socket.gethostname(), "imagefinder.pid": str(os.getpid())}
        try:
            experiment = self.experiment_id()
            created = client.create_run(experiment, run_name=name, tags={"imagefinder.kind": kind, **owner})
        except Exception as exc:  # noqa: BLE001
            raise TrackingError(f"cannot start an MLflow run in {self.uri}: {exc}") from exc
        try:
            self._fail_orphans(client, experiment, created.info.run_id)
        except Exception as exc:  # noqa: BLE001  (tidying up after others must not fail this run)
            log.warning("could not mark the runs of killed processes as failed: %s", exc)
        run = _MlflowRun(client, created.info.run_id)
        try:
            yield run
        except BaseException:
            client.set_terminated(created.info.run_id, "FAILED")
            raise
        client.set_terminated(created.info.run_id, "FINISHED")

    @staticmethod
    def _fail_orphans(client: Any, experiment: str, own: str) -> None:
        """Mark FAILED the RUNNING runs of this host whose process is gone."""
        from mlflow.entities import ViewType

        host = socket.gethostname()
        running = client.search_runs(
            [experiment],
            filter_string=f"attributes.status = 'RUNNING' and tags.`imagefinder.host` = '{host}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
        )
        for found in running:
            if found.info.run_id == own:
                continue
            pid = int(found.data.tags.get("imagefinder.pid", "0") or 0)
            if pid and not process_alive(pid):
                client.set_tag(found.info.run_id, "imagefinder.ended", "its process was killed")
                client.set_terminated(found.info.run_id, "FAILED")

    def register_encoder(
        self, encoder: Any, run: TrackedRun, tags: Mapping[str, str] | None = None
    ) -> ModelRecord | None:
        """The registered version of this encoder, logging and registering it (under the
        current run) if no version has the same ONNX file yet. `tags` go on a new version
        (a fine-tuned version's lineage: its base, its data's fingerprint)."""
        model_path = getattr(encoder, "model_path", None)
        if model_path is None or run.run_id is None:
            log.warning("%s has no ONNX file: not registered in MLflow", encoder.info.name)
            return None
        sha = file_sha256(Path(model_path))
        client = self._client()
        existing = self.find_version(sha)
        if existing is not None:
            return existing
        import mlflow.pyfunc

        from imagefinder.encoders.pyfunc import (
            ENTRY_POINT,
            make_paths_relative,
            model_code,
            model_files,
            model_requirements,
        )

        with tempfile.TemporaryDirectory() as scratch:
            staging = Path(scratch)
            (staging / "files").mkdir()
            artifacts = model_files(encoder, staging / "files")
            mlflow.pyfunc.save_model(
                path=str(staging / "encoder"),
                python_model=str(ENTRY_POINT),
                artifacts=artifacts,
                code_paths=[str(model_code(staging / "code"))],
                pip_requirements=model_requirements(encoder.spec),
            )
            make_paths_relative(staging / "encoder")
            client.log_artifacts(run.run_id, str(staging / "encoder"), "encoder")
        source = f"{client.get_run(run.run_id).info.artifact_uri}/encoder"
        try:
            client.create_registered_model(self.registered_model)
        except Exception:  # noqa: BLE001  (it exists already)
            pass
        info = encoder.info
        version = client.create_model_version(
            self.registered_model,
            source,
            run_id=run.run_id,
            tags={
                "sha256": sha,
                "encoder_name": info.name,
                "encoder_version": info.version,
                "dim": str(info.dim),
                "preprocessing": info.preprocessing,
                **(tags or {}),
            },
            description=f"{info.name} v{info.version} ({info.dim}-d): {info.preprocessing}",
        )
        return ModelRecord(self.registered_model, str(version.version), run.run_id, sha)

    def find_version(self, sha: str) -> ModelRecord | None:
        client = self._client()
        try:
            versions = client.search_model_versions(f"name = '{self.registered_model}'")
        except Exception:  # noqa: BLE001  (no such registered model yet)
            return None
        for version in sorted(versions, key=lambda v: int(v.version)):
            if version.tags.get("sha256") == sha:
                return ModelRecord(self.registered_model, str(version.version), version.run_id, sha)
        return None

    def load_encoder(self, uri: str) -> Any:
        """The encoder of a registered version (`models:/name/3`, `models:/name@production`),
        with `.registered` set to its ModelRecord."""
        import mlflow.pyfunc

        client = self._client()
        name, _, rest = uri[len(MODEL_URI_PREFIX) :].partition("/")
        try:
            if "@" in name and not rest:
                name, alias = name.split("@", 1)
                version = client.get_model_version_by_alias(name, alias)
            else:
                version = client.get_model_version(name, rest)
            loaded = mlflow.pyfunc.load_model(client.get_model_version_download_uri(name, version.version))
        except Exception as exc:  # noqa: BLE001  (unknown name/version/alias, unreadable files)
            raise ModelUnavailableError(
                f"cannot load {uri} from the MLflow registry at {self.uri}: {exc}"
            ) from exc
        encoder = loaded.unwrap_python_model().encoder
        encoder.registered = ModelRecord(
            name,
            str(version.version),
            version.run_id,
            version.tags.get("sha256") or file_sha256(encoder.model_path),
        )
        return encoder

    def list_runs(self, limit: int = 20) -> list[Any]:
        client = self._client()
        return list(
            client.search_runs([self.experiment_id()], max_results=limit, order_by=["start_time DESC"])
        )

    def list_versions(self) -> list[Any]:
        try:
            versions = self._client().search_model_versions(f"name = '{self.registered_model}'")
        except Exception:  # noqa: BLE001
            return []
        return sorted(versions, key=lambda v: int(v.version))


def metric_key(name: str) -> str:
    """MLflow metric names allow letters, digits and _-./ and spaces: recall@1 -> recall_at_1."""
    return name.replace("@", "_at_")


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
