"""Retrieval quality of the default configuration on the development benchmark.

Indexes each task's collection into a temporary store through the same service the CLI uses,
searches every query (returning the whole ranked collection, so mAP is exact), writes the ranked
lists in the format of `../shared/benchmarks/score.py`, and scores them with that script.

usage: python bench/dev_benchmark.py [--benchmarks ../shared/benchmarks] [--out FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagefinder.config import Settings
from imagefinder.evaluation.runner import read_ground_truth
from imagefinder.service import ImageFinder, QueryViews
from imagefinder.sources import FolderSource
from imagefinder.stores.embedded import EmbeddedStore
from imagefinder.threads import single_threaded_blas
from imagefinder.wiring import build_configured_encoder, service_for

ROOT = Path(__file__).resolve().parents[1]


class CountingEncoder:
    """The configured encoder, counting the images it embeds (encoder runs per query)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.images = 0

    def embed_arrays(self, batch: Any) -> Any:
        self.images += len(batch)
        return self._inner.embed_arrays(batch)

    def embed_images(self, images: Any) -> Any:
        self.images += len(images)
        return self._inner.embed_images(images)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@dataclass
class Applied:
    """What `finetune_and_apply` did: the training's report, the new version, the generation it
    switched to and how long re-embedding took."""

    report: Any
    encoder: Any
    switched: Any
    reindex_seconds: float


def finetune_and_apply(
    store: Any, base_encoder: Any, settings: Settings, options: Any, label: str
) -> Applied:
    """`imagefinder finetune --apply` as the CLI runs it: train on the images of `store`, register
    the result in MLflow, re-embed the collection into a new generation and switch to it. The
    caller closes its service over `store` and opens one over the new generation."""
    from imagefinder.finetune import FineTuner
    from imagefinder.wiring import build_reindexer, image_reader, mlflow_tracker

    tracker = mlflow_tracker(settings)
    tuner = FineTuner(
        store, image_reader(settings), tracker, base_encoder, None, settings.model_cache_dir / "ft"
    )

    def progress(record: Any, seen: int, total: int) -> None:
        if record is not None:
            line = (
                f"  {label} epoch {record.epoch}: loss {record.loss:.4f} validation {record.validation:.4f}"
            )
            print(f"{line} ({record.images_per_s:.1f} images/s)", flush=True)  # noqa: T201

    report = tuner.run(options, progress)
    assert report.model_uri is not None
    encoder = tracker.load_encoder(report.model_uri)
    started = time.perf_counter()
    switched = build_reindexer(settings, store).run(encoder, encoder.registered)
    return Applied(report, encoder, switched, time.perf_counter() - started)


def run_task(service: ImageFinder, task_dir: Path, work: Path, scorer: Path) -> dict[str, object]:
    limits = service.limits
    report = service.index(FolderSource(task_dir / "collection", limits.max_bytes))
    scored = score_task(service, task_dir, work, scorer)
    return {"index": {key: value for key, value in report.to_dict().items() if key != "problems"}, **scored}


def score_task(
    service: ImageFinder, task_dir: Path, work: Path, scorer: Path, views: QueryViews | None = None
) -> dict[str, object]:
    """Search every query of the task with `service` (its collection already indexed), with
    `views` (default: the service's setting), and score the ranked lists with the benchmark's
    own scorer."""
    queries = sorted((task_dir / "queries").iterdir())
    k = service.count()
    results_csv = work / f"{task_dir.name}_results.csv"
    latencies = []
    runs_before = service.encoder.images  # type: ignore[attr-defined]
    truth = read_ground_truth(task_dir / "ground_truth.csv")
    flagged = flagged_right = 0
    with open(results_csv, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["query_file", "rank", "collection_file", "score"])
        for query in queries:
            started = time.perf_counter()
            results = service.search_bytes(query.read_bytes(), k, str(query), views=views)
            latencies.append((time.perf_counter() - started) * 1000)
            for rank, result in enumerate(results, 1):
                writer.writerow([query.name, rank, result.id, f"{result.score:.6f}"])
            # The copy signal, judged on the top 5 results: flagged ones should be the original.
            for result in results[:5]:
                if result.is_copy:
                    flagged += 1
                    flagged_right += result.id in truth.get(query.name, set())
    scores_json = work / f"{task_dir.name}_scores.json"
    subprocess.run(
        [
            sys.executable,
            str(scorer),
            "--gt",
            str(task_dir / "ground_truth.csv"),
            "--results",
            str(results_csv),
            "--json",
            str(scores_json),
        ],
        check=True,
        capture_output=True,
    )
    return {
        "query_ms_median": round(statistics.median(latencies), 2),
        "query_ms_mean": round(statistics.mean(latencies), 2),
        "query_ms_p90": round(sorted(latencies)[int(0.9 * len(latencies))], 2),
        "encoder_runs_per_query": round((service.encoder.images - runs_before) / len(queries), 3),  # type: ignore[attr-defined]
        "copy_signal": {
            "threshold": round(service.copy_threshold, 4),
            "precision": round(flagged_right / max(1, flagged), 4),
            "recall": round(flagged_right / max(1, sum(len(v) for v in truth.values())), 4),
        },
        "scores": json.loads(scores_json.read_text()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--benchmarks", type=Path, default=ROOT.parent / "shared" / "benchmarks")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dev_benchmark.json")
    parser.add_argument(
        "--query-views", choices=["single", "adaptive", "thorough"], help="Override IMAGEFINDER_QUERY_VIEWS."
    )
    parser.add_argument("--encoder", help="Override IMAGEFINDER_ENCODER (e.g. efficientnet-lite0-fp32).")
    parser.add_argument(
        "--vector-dtype",
        default="float16",
        choices=["float16", "float32"],
        help="How the store keeps the vectors it re-scores from (float16, the default, or float32).",
    )
    args = parser.parse_args()
    single_threaded_blas()  # as the CLI and the server run
    if not (args.benchmarks / "score.py").is_file():
        sys.exit(f"no development benchmark at {args.benchmarks} (it lives in ../shared/benchmarks)")
    settings = Settings()
    if args.query_views:
        settings = settings.model_copy(update={"query_views": args.query_views})
    if args.encoder:
        settings = settings.model_copy(update={"encoder": args.encoder})

    encoder = CountingEncoder(build_configured_encoder(settings))
    output: dict[str, object] = {
        "encoder": {
            "name": encoder.info.name,
            "version": encoder.info.version,
            "preprocessing": encoder.info.preprocessing,
        },
        "query_views": settings.query_views,
        "vector_dtype": args.vector_dtype,
        "machine": {
            "python": platform.python_version(),
            "processor": platform.machine(),
            "cpus": __import__("os").cpu_count(),
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for task in ("near_duplicate", "same_class"):
            store = EmbeddedStore(work / task, vector_dtype=args.vector_dtype)
            service = service_for(settings, encoder, store)
            output[task] = run_task(service, args.benchmarks / task, work, args.benchmarks / "score.py")
            service.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(output, indent=1))
    nd = output["near_duplicate"]["scores"]["overall"]  # type: ignore[index]
    sc = output["same_class"]["scores"]["overall"]  # type: ignore[index]
    print(f"near_duplicate: recall@1 {nd['recall@1']}  mAP {nd['mAP']}  uAP {nd.get('uAP')}")  # noqa: T201
    for task in ("near_duplicate", "same_class"):
        keys = ("encoder_runs_per_query", "query_ms_median", "query_ms_mean")
        cost = {key: output[task][key] for key in keys}  # type: ignore[index]
        print(f"{task} query cost: {cost}")  # noqa: T201
    print(f"copy signal:    {output['near_duplicate']['copy_signal']}")  # type: ignore[index]  # noqa: T201
    print(f"same_class:     mAP {sc['mAP']}  precision@10 {sc['precision@10']}")  # noqa: T201
    print(f"written to {args.out}")  # noqa: T201


if __name__ == "__main__":
    main()
