"""The fine-tuning use case: learn from the collection's own images, export the result and
register it in MLflow as a new version of the encoder, with its lineage.

    images (re-read from where the index recorded them) + labels
      -> held-out validation split -> Trainer (training.trainer) -> ONNX (training.export)
      -> MLflow: the training run (parameters, per-epoch curve, before/after table, data
         fingerprint) and a registered encoder version tagged with its base and that run

Training always starts from the ImageNet weights of the default encoder, the base that every
fine-tuned version records. Switching the index to the result is `reindex` (a new index
generation), which `imagefinder finetune --apply` runs right after.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imagefinder.encoders.base import Encoder
from imagefinder.errors import ImageFinderError
from imagefinder.stores.base import VectorStore
from imagefinder.tracking import ModelRecord, Tracker, metric_key
from imagefinder.training.data import (
    ImageReader,
    LoadedImages,
    TrainingDataError,
    concatenate,
    load_indexed,
    load_labelled_folder,
    merge_labels,
    read_labels_csv,
)


class FinetuneUnsupportedError(ImageFinderError):
    """The index's encoder is not one that fine-tuning can train."""


class NoImprovementError(ImageFinderError):
    """No epoch beat the base model on validation: there is nothing better to register."""


@dataclass(frozen=True)
class FinetuneOptions:
    labels_csv: Path | None = None
    labelled_dir: Path | None = None
    self_supervised: bool = False
    epochs: int = 20
    batch_size: int = 48
    learning_rate: float = 3e-4
    seed: int = 0
    device: str = "cpu"
    max_images: int = 5000
    patience: int = 4
    supervised_loss: str = "supcon"
    train_from: int = 10
    min_images_per_epoch: int = 512
    collection_weight: float = 1.0

    @property
    def supervised(self) -> bool:
        return self.labels_csv is not None or self.labelled_dir is not None

    @property
    def mode(self) -> str:
        return "+".join(
            m for m, on in (("self-supervised", self.self_supervised), ("supervised", self.supervised)) if on
        )


@dataclass
class FinetuneReport:
    mode: str
    images: int
    validation_images: int
    skipped: list[tuple[str, str]]
    fingerprint: str
    metric: str
    before: float
    after: float
    best_epoch: int
    stopped_early: bool
    history: list[dict[str, float]]
    seconds: float
    base: dict[str, str]
    info: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, float] = field(default_factory=dict)
    model_uri: str | None = None
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Progress = Callable[[Any, int, int], None]


class FineTuner:
    """Fine-tunes the default encoder on the images of `store`. `base` is the encoder serving
    the index now (recorded as the base of the new version), `base_uri` its registered version
    when it has one."""

    def __init__(
        self,
        store: VectorStore,
        reader: ImageReader,
        tracker: Tracker,
        base: Encoder,
        base_uri: str | None,
        work_dir: Path,
    ) -> None:
        self._store = store
        self._reader = reader
        self._tracker = tracker
        self._base = base
        self._base_uri = base_uri
        self._work_dir = work_dir

    def run(self, options: FinetuneOptions, progress: Progress | None = None) -> FinetuneReport:
        return self.train(self.load(options), options, progress)

    def load(self, options: FinetuneOptions) -> LoadedImages:
        """Check the request and read the training images (and labels); what cannot be used is
        in the result's `skipped`."""
        if not options.self_supervised and not options.supervised:
            raise TrainingDataError("say what to learn: --self-supervised, --labels CSV or --labelled DIR")
        if options.labels_csv is not None and options.labelled_dir is not None:
            raise TrainingDataError("--labels and --labelled are two ways to give labels: use one")
        base = self._base.info
        if base.name != "efficientnet-lite0":
            raise FinetuneUnsupportedError(
                f"fine-tuning trains the default encoder (efficientnet-lite0) from its ImageNet "
                f"weights; this index was built with {base.name} v{base.version}"
            )
        if not self._tracker.enabled:
            raise FinetuneUnsupportedError(
                "fine-tuning registers its result in MLflow: turn tracking on (IMAGEFINDER_TRACKING__ENABLED)"
            )
        data = self._load(options)
        if len(data.ids) < 2:
            raise TrainingDataError(f"fine-tuning needs at least two readable images; found {len(data.ids)}")
        return data

    def train(
        self, data: LoadedImages, options: FinetuneOptions, progress: Progress | None = None
    ) -> FinetuneReport:
        """Train on `data` (from `load`), export, register; the report of it all."""
        from imagefinder.training.session import train_and_export

        base = self._base.info

        started = time.perf_counter()
        with self._tracker.run("finetune", f"finetune {options.mode}") as run:
            run.log_params(self._params(options, data))
            trained = train_and_export(data, options, base, self._work_dir, progress)
            for record in trained.result.history:
                run.log_metrics(
                    {
                        "loss": record.loss,
                        f"validation.{trained.result.metric}": record.validation,
                        "images_per_s": record.images_per_s,
                    },
                    step=record.epoch,
                )
            report = FinetuneReport(
                mode=options.mode,
                images=trained.train_images,
                validation_images=trained.validation_images,
                skipped=data.skipped,
                fingerprint=data.fingerprint(),
                metric=trained.result.metric,
                before=trained.result.before,
                after=trained.result.after,
                best_epoch=trained.result.best_epoch,
                stopped_early=trained.result.stopped_early,
                history=[asdict(record) for record in trained.result.history],
                seconds=time.perf_counter() - started,
                base={"name": base.name, "version": base.version, "uri": self._base_uri or ""},
                info=asdict(trained.exported.info),
                parity=trained.exported.parity,
                run_id=run.run_id,
            )
            run.log_metrics(
                {
                    f"before.{report.metric}": report.before,
                    f"after.{report.metric}": report.after,
                    "best_epoch": report.best_epoch,
                    "train_images": report.images,
                    "skipped_images": len(report.skipped),
                    **{f"parity.{k}": v for k, v in report.parity.items()},
                }
            )
            self._log_tables(run, report)
            if report.best_epoch == 0:
                raise NoImprovementError(
                    f"no epoch beat the base model on validation ({report.metric} {report.before:.4f}); "
                    "nothing was registered (more epochs, more images or another learning rate may help; "
                    f"the curve is in MLflow run {report.run_id})"
                )
            model = self._register(trained.encoder, run, report)
            report.model_uri = model.uri if model else None
        return report

    def _load(self, options: FinetuneOptions) -> LoadedImages:
        items = self._store.payload_items
        if options.labelled_dir is not None:
            labelled = load_labelled_folder(options.labelled_dir, self._reader, options.max_images)
            if options.self_supervised:
                everything = load_indexed(items(), self._reader, None, options.max_images)
                return concatenate(everything, labelled)
            return labelled
        labels = read_labels_csv(options.labels_csv) if options.labels_csv is not None else None
        if labels is not None and options.self_supervised:
            everything = load_indexed(items(), self._reader, None, options.max_images)
            labelled = load_indexed(items(), self._reader, labels, options.max_images)
            return merge_labels(everything, labelled)
        return load_indexed(items(), self._reader, labels, options.max_images)

    def _params(self, options: FinetuneOptions, data: LoadedImages) -> dict[str, Any]:
        params = {f"finetune.{k}": (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()}
        return {
            **params,
            "finetune.mode": options.mode,
            "finetune.images": len(data.ids),
            "finetune.labels": ",".join(data.label_names),
            "finetune.data_fingerprint": data.fingerprint(),
            "base.encoder": self._base.info.name,
            "base.version": self._base.info.version,
            "base.model_uri": self._base_uri or "",
        }

    def _log_tables(self, run: Any, report: FinetuneReport) -> None:
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            (folder / "finetune_report.json").write_text(json.dumps(report.to_dict(), indent=1))
            table = ["epoch,loss,validation,seconds,images_per_s"]
            table += [
                f"{r['epoch']},{r['loss']:.5f},{r['validation']:.5f},{r['seconds']:.1f},{r['images_per_s']:.2f}"
                for r in report.history
            ]
            (folder / "epochs.csv").write_text("\n".join(table) + "\n")
            (folder / "before_after.csv").write_text(
                f"metric,base,finetuned\n{report.metric},{report.before:.5f},{report.after:.5f}\n"
            )
            for name in ("finetune_report.json", "epochs.csv", "before_after.csv"):
                run.log_artifact(folder / name, "finetune")
            if report.skipped:
                lines = ["where,reason"] + [f"{json.dumps(w)},{json.dumps(r)}" for w, r in report.skipped]
                (folder / "skipped.csv").write_text("\n".join(lines) + "\n")
                run.log_artifact(folder / "skipped.csv", "finetune")

    def _register(self, encoder: Encoder, run: Any, report: FinetuneReport) -> ModelRecord | None:
        tags = {
            "kind": "finetuned",
            "base_encoder": f"{report.base['name']} v{report.base['version']}",
            "base_model_uri": report.base["uri"],
            "training_run": run.run_id or "",
            "training_mode": report.mode,
            "data_fingerprint": report.fingerprint,
            f"before.{metric_key(report.metric)}": f"{report.before:.4f}",
            f"after.{metric_key(report.metric)}": f"{report.after:.4f}",
        }
        return self._tracker.register_encoder(encoder, run, tags)
