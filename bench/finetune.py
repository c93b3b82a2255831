"""Fine-tuning on the development benchmark, next to the base model in the same run.

- near_duplicate: the collection is indexed with the default encoder and scored; then
  self-supervised fine-tuning on the collection's own images (the queries are never seen),
  `reindex` into a new generation, and the same queries scored again through the service that
  `imagefinder serve` builds for that generation.
- same_class: the same with supervised fine-tuning on the collection rows of `labels.csv`
  (each loss named in --losses, one after the other from the same base).

Every run goes through the same use cases as `imagefinder finetune --apply` (FineTuner,
Reindexer) with MLflow in a temporary folder. Scores come from the benchmark's own score.py.

usage: python bench/finetune.py [--benchmarks ../shared/benchmarks] [--out FILE] [--epochs N]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from dev_benchmark import CountingEncoder, finetune_and_apply, score_task

from imagefinder.config import Settings
from imagefinder.finetune import FinetuneOptions
from imagefinder.sources import FolderSource
from imagefinder.threads import single_threaded_blas
from imagefinder.wiring import (
    build_configured_encoder,
    open_store,
    service_for,
)

ROOT = Path(__file__).resolve().parents[1]


def summary(scored: dict[str, Any]) -> dict[str, Any]:
    overall = scored["scores"]["overall"]
    out = {key: overall.get(key) for key in ("recall@1", "recall@5", "mAP", "uAP", "precision@10")}
    per_family = scored["scores"].get("by_family") or {}
    out["per_family_recall@1"] = {name: fam.get("recall@1") for name, fam in per_family.items()}
    for key in ("query_ms_median", "query_ms_mean", "encoder_runs_per_query", "copy_signal"):
        out[key] = scored[key]
    return out


def run_task(
    task: str, bench: Path, work: Path, options: FinetuneOptions, views: list[str]
) -> dict[str, Any]:
    settings = Settings(home=work / task)
    scorer = bench / "score.py"
    task_dir = bench / task
    base_encoder = build_configured_encoder(settings)
    base = service_for(settings, CountingEncoder(base_encoder), open_store(settings))
    base.index(FolderSource(task_dir / "collection", settings.images.max_bytes))
    result: dict[str, Any] = {"base": {}, "finetuned": {}}
    for view in views:
        result["base"][view] = summary(score_task(base, task_dir, work, scorer, view))

    applied = finetune_and_apply(base.store, base_encoder, settings, options, task)
    report, encoder = applied.report, applied.encoder
    base.close()
    tuned = service_for(settings, CountingEncoder(encoder), open_store(settings))
    for view in views:
        result["finetuned"][view] = summary(score_task(tuned, task_dir, work, scorer, view))
    tuned.close()
    result["training"] = {
        "mode": report.mode,
        "images": report.images,
        "validation_images": report.validation_images,
        "metric": report.metric,
        "validation_before": report.before,
        "validation_after": report.after,
        "best_epoch": report.best_epoch,
        "epochs_run": len(report.history),
        "stopped_early": report.stopped_early,
        "seconds": round(report.seconds, 1),
        "images_per_s": round(
            sum(r["images_per_s"] for r in report.history) / max(1, len(report.history)), 2
        ),
        "history": report.history,
        "parity": report.parity,
        "model": report.info,
        "reindex_seconds": round(applied.reindex_seconds, 1),
        "generation": applied.switched.generation.label,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--benchmarks", type=Path, default=ROOT.parent / "shared" / "benchmarks")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "finetune.json")
    parser.add_argument("--epochs", type=int, default=FinetuneOptions().epochs)
    parser.add_argument("--tasks", default="near_duplicate,same_class")
    parser.add_argument(
        "--losses", default="supcon,proxy", help="Supervised losses to compare on same_class."
    )
    parser.add_argument("--views", default="adaptive,single")
    parser.add_argument("--learning-rate", type=float, default=FinetuneOptions().learning_rate)
    parser.add_argument("--train-from", type=int, default=FinetuneOptions().train_from)
    parser.add_argument("--collection-weight", type=float, default=FinetuneOptions().collection_weight)
    parser.add_argument("--work", type=Path, help="Keep indexes and models here (default: temporary).")
    args = parser.parse_args()
    single_threaded_blas()
    if not (args.benchmarks / "score.py").is_file():
        sys.exit(f"no development benchmark at {args.benchmarks} (it lives in ../shared/benchmarks)")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    output: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "processor": platform.machine(),
            "cpus": os.cpu_count(),
        },
        "command": " ".join(sys.argv),
    }
    common = FinetuneOptions(
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        train_from=args.train_from,
        collection_weight=args.collection_weight,
    )
    views = args.views.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        if "near_duplicate" in args.tasks:
            options = replace(common, self_supervised=True)
            output["near_duplicate"] = run_task("near_duplicate", args.benchmarks, work, options, views)
            _print("near_duplicate", output["near_duplicate"])
        if "same_class" in args.tasks:
            labels = work / "same_class_labels.csv"
            with open(args.benchmarks / "same_class" / "labels.csv", newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if r["split"] == "collection"]
            with open(labels, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["id", "label"])
                writer.writerows((r["file"], r["label"]) for r in rows)
            output["same_class"] = {}
            for loss in args.losses.split(","):
                options = replace(common, labels_csv=labels, supervised_loss=loss)
                output["same_class"][loss] = run_task(
                    "same_class", args.benchmarks, work / loss, options, views
                )
                _print(f"same_class ({loss})", output["same_class"][loss])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(output, indent=1))
    print(f"written to {args.out}")  # noqa: T201


def _print(name: str, result: dict[str, Any]) -> None:
    for view in result["base"]:
        before, after = result["base"][view], result["finetuned"][view]
        print(  # noqa: T201
            f"{name} [{view}]: recall@1 {before['recall@1']} -> {after['recall@1']}, "
            f"mAP {before['mAP']} -> {after['mAP']}, uAP {before.get('uAP')} -> {after.get('uAP')}"
        )
        print(f"   per family after: {after['per_family_recall@1']}")  # noqa: T201
    print(f"   training: {result['training']['seconds']} s, best epoch {result['training']['best_epoch']}")  # noqa: T201


if __name__ == "__main__":
    main()
