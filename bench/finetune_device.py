"""The trainings of `make bench-finetune` alone, on a chosen device, for their speed there.

`bench/finetune.py` needs the whole service (FAISS, MLflow, an index) to score a trained model on
the benchmark's queries; a GPU machine has none of it. This runs only `training.session`'s
train-and-export on the same collections with the same options, reads the images as the index
would (`ImageReader`), and reports training time, images/s per epoch, the share spent making the
edited views on the CPU, and the validation before/after, which compare with the `training`
records of `bench/results/finetune.json`. The order of the images (sorted file names here, index
order there) differs, so the runs are the same training, not the same random draws.

usage: python bench/finetune_device.py [--benchmarks ../shared/benchmarks] [--device auto]
           [--runs self-supervised,supcon,proxy] [--out FILE] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from imagefinder.finetune import FinetuneOptions
from imagefinder.images import ImageLimits
from imagefinder.training import trainer as trainer_module
from imagefinder.training.data import ImageReader, LoadedImages, load_indexed
from imagefinder.training.session import train_and_export

ROOT = Path(__file__).resolve().parents[1]


class ViewClock:
    """Seconds spent in `Trainer._views` (edits and preprocessing, on the CPU) while installed."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._original = trainer_module.Trainer._views

    def __enter__(self) -> ViewClock:
        original, clock = self._original, self

        def timed(trainer: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(trainer, *args, **kwargs)
            finally:
                clock.seconds += time.perf_counter() - started

        trainer_module.Trainer._views = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        trainer_module.Trainer._views = self._original  # type: ignore[method-assign]


def load(folders: list[Path], labels: dict[str, str] | None) -> LoadedImages:
    """The images of `folders` as an index of them would hold them (ids prefixed with the folder's
    name when there are several)."""
    items = (
        (path.name if len(folders) == 1 else f"{folder.name}/{path.name}", {"file": str(path)})
        for folder in folders
        for path in sorted(folder.iterdir())
        if path.is_file()
    )
    return load_indexed(items, ImageReader(ImageLimits(), None), labels, FinetuneOptions().max_images)


def collection_labels(labels_csv: Path) -> dict[str, str]:
    with open(labels_csv, newline="") as handle:
        return {r["file"]: r["label"] for r in csv.DictReader(handle) if r["split"] == "collection"}


def train(name: str, data: LoadedImages, options: FinetuneOptions, work: Path) -> dict[str, Any]:
    def progress(record: Any, seen: int, total: int) -> None:
        if record is not None:
            print(  # noqa: T201
                f"  {name} epoch {record.epoch}: loss {record.loss:.4f} validation {record.validation:.4f} "
                f"({record.images_per_s:.1f} images/s, {record.seconds:.1f} s)",
                flush=True,
            )

    started = time.perf_counter()
    with ViewClock() as clock:
        trained = train_and_export(data, options, base_info(), work / name, progress)
    seconds = time.perf_counter() - started
    result = trained.result
    trained_images = sum(r.images_per_s * r.seconds for r in result.history)
    train_seconds = sum(r.seconds for r in result.history)
    return {
        "images": trained.train_images,
        "validation_images": trained.validation_images,
        "metric": result.metric,
        "validation_before": result.before,
        "validation_after": result.after,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "seconds": round(seconds, 1),
        "epoch_seconds": round(train_seconds, 1),
        "images_per_s": round(trained_images / max(train_seconds, 1e-9), 2),
        "view_seconds": round(clock.seconds, 1),
        "history": [vars(r) for r in result.history],
        "parity": trained.exported.parity,
        "model_file": str(trained.exported.path),
    }


def base_info() -> Any:
    from imagefinder.encoders.lite0 import LITE0_INT8_INFO

    return LITE0_INT8_INFO


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--benchmarks", type=Path, default=ROOT.parent / "shared" / "benchmarks")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when present)")
    parser.add_argument(
        "--runs",
        default="self-supervised,supcon,proxy",
        help="self-supervised (near-duplicate collection), supcon, proxy (same-class labels), "
        "duplicates (self-supervised on the near-duplicate collection and queries together: "
        "bench/duplicates.py's image set)",
    )
    parser.add_argument("--epochs", type=int, default=FinetuneOptions().epochs)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "finetune_device.json")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "finetune_device")
    parser.add_argument("--keep", type=Path, help="Copy each run's exported ONNX file here.")
    args = parser.parse_args()
    unknown = set(args.runs.split(",")) - {"self-supervised", "duplicates", "supcon", "proxy"}
    if unknown:
        parser.error(f"unknown runs: {', '.join(sorted(unknown))}")
    if not (args.benchmarks / "near_duplicate").is_dir():
        sys.exit(f"no development benchmark at {args.benchmarks}")
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    if device == "auto":
        device = "cpu"
    output: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "processor": platform.machine(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "device": device,
            "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        },
        "command": " ".join(sys.argv),
        "runs": {},
    }
    common = FinetuneOptions(epochs=args.epochs, device=device)
    labels_csv = args.benchmarks / "same_class" / "labels.csv"
    for name in args.runs.split(","):
        near_duplicate = args.benchmarks / "near_duplicate"
        if name == "self-supervised":
            data = load([near_duplicate / "collection"], None)
            options = replace(common, self_supervised=True)
        elif name == "duplicates":
            data = load([near_duplicate / "collection", near_duplicate / "queries"], None)
            options = replace(common, self_supervised=True)
        else:
            data = load([args.benchmarks / "same_class" / "collection"], collection_labels(labels_csv))
            options = replace(common, labels_csv=labels_csv, supervised_loss=name)
        run = output["runs"][name] = train(name, data, options, args.work)
        print(  # noqa: T201
            f"{name}: {run['seconds']} s, {run['images_per_s']} images/s, views {run['view_seconds']} s, "
            f"{run['metric']} {run['validation_before']:.4f} -> {run['validation_after']:.4f}",
            flush=True,
        )
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(run["model_file"], args.keep / f"{name}.onnx")
        # Written after each run, so a run cut short keeps the ones before it.
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(output, indent=1))
    print(f"written to {args.out}")  # noqa: T201


if __name__ == "__main__":
    main()
