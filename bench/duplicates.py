"""`imagefinder duplicates` measured: quality next to its peers, the copy flag's calibration on
small, copy-free and copy-rich collections, and a scan of a million vectors.

- quality: the dev near-duplicate benchmark's collection and queries indexed together (each
  original with its edited copies is one true group; distractors and hard negatives belong to no
  group). Pairwise precision, recall and F1 of the predicted groups (a pair is predicted when both
  images are in one group), for ImageFinder at its defaults and, in the same run on the same
  folder, imagededup's PHash and DHash and fastdup, each as its documentation shows
  (bench/peers_duplicates.py, in bench/.venv-peers).
- calibration: the `is_copy` flag of search results (top result, default views) on three
  collections: 200 photos of the dev collection (copy-free), 80 of them (small), and the 200 with
  half of their edited copies indexed too (copy-rich). Queries: the copies not indexed (each has
  its original in the collection) and outside photos that are copies of nothing indexed: the
  other 62 dev collection photos (the same kinds of subject) and the 17 demo photos. Precision
  and recall of the flag, the share of outside photos flagged, the thresholds calibrated, and
  what the old rule (the 0.95-quantile of nearest-neighbour scores alone) would have flagged.
- scale: synthetic vectors of the index benchmark (a mixture of Gaussians, 256 dimensions) with
  1 % planted near copies, in the embedded store; the scan's time, the process's memory before and
  at its peak, and the share of planted copies grouped with their original. Then 1 % more images
  (half of them near copies of images already there) and a second scan that carries on from the
  first (only the new images searched): its time and whether it found the new copies.

With `--encoder-onnx FILE` (a fine-tuned Lite0 export, e.g. from bench/finetune_device.py
--runs duplicates) the quality part runs ImageFinder with that model instead of the default.

usage: python bench/duplicates.py [--benchmarks ../shared/benchmarks] [--peers-python PY]
                                  [--scale 1000000] [--out bench/results/duplicates.json]
                                  [--encoder-onnx FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PLANTED_SHARE = 0.01
SCALE_THRESHOLD = 0.8  # planted copies score about 0.96 with their original; cluster mates about 0.6


# -- quality ---------------------------------------------------------------------------------


def nd_folder(benchmarks: Path, work: Path) -> tuple[Path, dict[str, str]]:
    """The near-duplicate collection (c/) and queries (q/) in one folder, and each image's group."""
    task = benchmarks / "near_duplicate"
    folder = work / "nd"
    shutil.copytree(task / "collection", folder / "c")
    shutil.copytree(task / "queries", folder / "q")
    group = {f"c/{p.name}": f"c/{p.name}" for p in (folder / "c").iterdir()}
    with open(task / "ground_truth.csv") as handle:
        for row in csv.DictReader(handle):
            group[f"q/{row['query_file']}"] = f"c/{row['expected_collection_file']}"
    return folder, group


def pairwise(predicted: set[tuple[str, str]], group: dict[str, str]) -> dict[str, Any]:
    ids = sorted(group)
    by_group: dict[str, list[str]] = {}
    for image_id in ids:
        by_group.setdefault(group[image_id], []).append(image_id)
    truth = {(a, b) for members in by_group.values() for i, a in enumerate(members) for b in members[i + 1 :]}
    hits = len(predicted & truth)
    precision = hits / len(predicted) if predicted else 0.0
    recall = hits / len(truth)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "predicted_pairs": len(predicted),
        "true_pairs": len(truth),
    }


def pairs_of(groups: list[list[str]]) -> set[tuple[str, str]]:
    return {
        tuple(sorted((a, b))) for members in groups for i, a in enumerate(members) for b in members[i + 1 :]
    }  # type: ignore[misc]


def scans(service: Any, settings: Any, group: dict[str, str], name: str) -> dict[str, Any]:
    """The duplicates scan at its defaults and at the settings given for context, scored."""
    from imagefinder.wiring import duplicate_finder, image_reader

    finder = duplicate_finder(service, image_reader(settings))
    rows: dict[str, Any] = {}
    runs = [
        (name, {}, "defaults: calibrated threshold, views auto (adaptive at this size), keep resolution"),
        (f"{name}-single-view", {"views": "single"}, "calibrated threshold, stored vectors only"),
    ]
    for threshold in (0.5, 0.6, 0.7):
        runs.append((f"{name}-threshold-{threshold}", {"threshold": threshold}, "fixed threshold (context)"))
    for row, options, how in runs:
        report = finder.find(**options)
        groups = [[m.id for m in g.members] for g in report.groups]
        rows[row] = {
            "how": how,
            **pairwise(pairs_of(groups), group),
            "groups": len(groups),
            "threshold": report.summary["threshold"],
            "views": report.summary["views"],
            "seconds": report.summary["seconds"],
        }
    return rows


def finetune_then_serve(
    service: Any, encoder: Any, settings: Any, epochs: int | None = None
) -> tuple[Any, dict[str, Any]]:
    """`imagefinder finetune --self-supervised --apply` on the indexed images (no labels): the
    service over the new generation, and the training's figures."""
    from dataclasses import replace

    from dev_benchmark import finetune_and_apply

    from imagefinder.finetune import FinetuneOptions
    from imagefinder.wiring import open_store, service_for

    options = FinetuneOptions(self_supervised=True)
    options = replace(options, epochs=epochs or options.epochs)
    applied = finetune_and_apply(service.store, encoder, settings, options, "duplicates")
    service.close()
    report = applied.report
    trained = {
        "images": report.images,
        "seconds": round(report.seconds, 1),
        "epochs_run": len(report.history),
        "best_epoch": report.best_epoch,
        "validation": [report.metric, round(report.before, 4), round(report.after, 4)],
    }
    return service_for(settings, applied.encoder, open_store(settings)), trained


def finetuned_encoder(path: Path) -> Any:
    """The int8 ONNX file of a fine-tuned Lite0 as `finetune` serves it (named by its hash)."""
    import hashlib
    from dataclasses import replace

    from imagefinder.encoders.lite0 import LITE0_INT8_INFO, lite0_onnx_encoder

    tag = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return lite0_onnx_encoder(path, replace(LITE0_INT8_INFO, version=f"{LITE0_INT8_INFO.version}+ft-{tag}"))


def quality(
    benchmarks: Path,
    work: Path,
    peers_python: Path | None,
    encoder_onnx: Path | None = None,
    finetune: bool = False,
) -> dict[str, Any]:
    from imagefinder.config import Settings
    from imagefinder.sources import FolderSource
    from imagefinder.wiring import build_configured_encoder, open_store, service_for

    folder, group = nd_folder(benchmarks, work)
    settings = Settings(home=work / "home")
    encoder = finetuned_encoder(encoder_onnx) if encoder_onnx else build_configured_encoder(settings)
    service = service_for(settings, encoder, open_store(settings))
    service.index(FolderSource(folder, 10**8))
    # Rows of another model than the default are named apart, so no table takes them for it.
    rows = scans(service, settings, group, "imagefinder-onnx" if encoder_onnx else "imagefinder")
    if finetune:
        service, trained = finetune_then_serve(service, encoder, settings)
        rows.update(scans(service, settings, group, "imagefinder-finetuned"))
        rows["imagefinder-finetuned"]["training"] = trained
    service.close()
    if peers_python is not None and peers_python.exists():
        out = work / "peers.json"
        subprocess.run(
            [str(peers_python), str(ROOT / "bench" / "peers_duplicates.py"), str(folder), str(out)],
            check=True,
        )
        for name, found in json.loads(out.read_text()).items():
            if "error" in found:
                rows[name] = found
                continue
            predicted = {tuple(p) for p in found["pairs"]} if "pairs" in found else pairs_of(found["groups"])
            rows[name] = {"how": found["how"], **pairwise(predicted, group), "seconds": found["seconds"]}  # type: ignore[arg-type]
    else:
        rows["peers"] = {"error": f"no peers environment at {peers_python} (make bench-duplicates builds it)"}
    return {"images": len(group), "rows": rows}


# -- calibration -------------------------------------------------------------------------------


def calibration(benchmarks: Path, work: Path) -> dict[str, Any]:
    from imagefinder.calibration import nearest_scores
    from imagefinder.config import Settings
    from imagefinder.demo import write_demo_collection
    from imagefinder.sources import FolderSource
    from imagefinder.stores.embedded import EmbeddedStore
    from imagefinder.wiring import build_configured_encoder, service_for

    settings = Settings()
    encoder = build_configured_encoder(settings)
    task = benchmarks / "near_duplicate"
    truth = {}
    with open(task / "ground_truth.csv") as handle:
        for row in csv.DictReader(handle):
            truth[row["query_file"]] = row["expected_collection_file"]
    rng = random.Random(0)
    collection = sorted((task / "collection").iterdir())
    rng.shuffle(collection)
    # Outside photos: dev collection photos kept out of every collection below (the same kinds of
    # subject, some of them the hard negatives of the same scene; copies of nothing indexed), and
    # the demo photos. (The same-class benchmark's photos are re-encodings of the near-duplicate
    # collection's sources: copies, not outside photos.)
    held, base = collection[:62], sorted(collection[62:])
    demo = work / "demo-photos"
    write_demo_collection(demo)
    outside = held + sorted(demo.iterdir())
    names = {p.name for p in base}
    copies = sorted(p for p in (task / "queries").iterdir() if truth[p.name] in names)
    small = rng.sample(base, 80)
    small_names = {p.name for p in small}
    indexed_copies = set(rng.sample(copies, len(copies) // 2))
    scenarios = {
        "copy-free": (base, copies),
        "small": (small, [c for c in copies if truth[c.name] in small_names]),
        "copy-rich": (base + sorted(indexed_copies), [c for c in copies if c not in indexed_copies]),
    }
    out: dict[str, Any] = {}
    for name, (members, queries) in scenarios.items():
        folder = work / f"cal-{name}"
        folder.mkdir()
        for path in members:
            shutil.copy(path, folder / path.name)
        service = service_for(settings, encoder, EmbeddedStore(work / f"cal-{name}-index"))
        service.index(FolderSource(folder, 10**8))
        space = service.store.search_space
        old = float(
            np.clip(
                np.quantile(
                    nearest_scores(space.project(service.store.vectors()), np.random.default_rng(0)), 0.95
                ),
                0.3,
                0.95,
            )
        )
        # An indexed copy stands for its original: finding it first is finding the photo.
        original = {path.name: truth.get(path.name, path.name) for path in members}
        rows = []
        for path in queries + outside:
            hits = service.search_bytes(path.read_bytes(), k=1, source=path.name)
            expected = truth.get(path.name) if path in queries else None
            found = original.get(hits[0].id) if hits else None
            rows.append((expected, found, hits[0].score if hits else -1.0))
        out[name] = {
            "images": len(members),
            "copy_queries": len(queries),
            "outside_queries": len(outside),
            "copy_threshold": space.copy_threshold,
            "duplicate_threshold": space.in_collection_threshold,
            "flag": flag_quality(rows, space.copy_threshold),
            "old_rule_threshold": round(old, 4),
            "old_rule_flag": flag_quality(rows, old),
        }
        service.close()
    return out


def flag_quality(rows: list[tuple[str | None, str | None, float]], threshold: float) -> dict[str, Any]:
    """Of the top results flagged, the share that are the query's original (or an indexed copy of
    it); of the copies, the share whose original is the flagged top result; of the outside photos,
    the share flagged."""
    flagged = [(expected, found) for expected, found, score in rows if score >= threshold]
    correct = sum(1 for expected, found in flagged if expected is not None and found == expected)
    copies = sum(1 for expected, _, _ in rows if expected is not None)
    outside = [score for expected, _, score in rows if expected is None]
    return {
        "precision": round(correct / len(flagged), 4) if flagged else None,
        "recall": round(correct / copies, 4) if copies else None,
        "outside_flagged": round(sum(score >= threshold for score in outside) / len(outside), 4),
    }


# -- scale -----------------------------------------------------------------------------------


def scale_build(path: Path, n: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "bench"))
    import index as index_bench  # the index benchmark's synthetic data

    from imagefinder.encoders.base import EncoderInfo
    from imagefinder.stores.embedded import EmbeddedStore

    planted = int(n * PLANTED_SHARE)
    base = index_bench.mixture(n - planted, seed=1)
    rng = np.random.default_rng(7)
    copies = base[:planted] + 0.018 * rng.standard_normal((planted, base.shape[1])).astype(np.float32)
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    vectors = np.concatenate([base, copies])
    started = time.perf_counter()
    store = EmbeddedStore(path)
    store.bind_encoder(EncoderInfo("synthetic", "1", vectors.shape[1], "none"))
    fill_with_hashes(store, vectors, 0)
    store.optimise()
    store.close()
    median_copy_score = float(np.median(np.einsum("ij,ij->i", copies, base[:planted])))
    return {
        "build_s": round(time.perf_counter() - started, 1),
        "planted": planted,
        "copy_score_median": round(median_copy_score, 3),
    }


def fill_with_hashes(store: Any, vectors: np.ndarray, first: int) -> None:
    """As `index.fill`, with the content hash every indexed image has (what tells a later scan
    which images it has seen)."""
    for start in range(0, len(vectors), 2000):
        stop = min(len(vectors), start + 2000)
        ids = [f"img{first + i:07d}" for i in range(start, stop)]
        payloads = [{"uri": f"/photos/{i}.jpg", "hash": f"h{i}"} for i in ids]
        store.upsert(ids, vectors[start:stop], payloads)


def memory_of(path: Path) -> Any:
    from imagefinder.duplicates_memory import FileScanMemory

    return FileScanMemory(path / "duplicates-scan.npz")


def scale_scan(path: Path, n: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "bench"))
    from index import rss_bytes  # the index benchmark's own measure

    from imagefinder.duplicates import DuplicateFinder
    from imagefinder.stores.embedded import EmbeddedStore

    before_open = rss_bytes()
    store = EmbeddedStore(path)
    store.count()
    opened = rss_bytes()
    planted = int(n * PLANTED_SHARE)
    # The scan's own peak, sampled while it runs (the process's lifetime peak, ru_maxrss, is
    # reached while FAISS reads the index file, before the scan).
    samples = [opened]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            samples.append(rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    report = DuplicateFinder(store, memory=memory_of(path)).find(threshold=SCALE_THRESHOLD, views="single")
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    peak = max(samples)
    lifetime_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    original = {f"img{n - planted + i:07d}": f"img{i:07d}" for i in range(planted)}
    grouped = {m.id: g.centre for g in report.groups for m in g.members}
    together = sum(
        1 for copy, source in original.items() if copy in grouped and grouped[copy] == grouped.get(source)
    )
    strangers = sum(
        1
        for g in report.groups
        for m in g.members
        if m.id not in original and m.id not in set(original.values())
    )
    store.close()
    return {
        "scan_s": round(seconds, 1),
        "rss_store_opened_mb": round((opened - before_open) / 2**20),
        "rss_scan_peak_mb": round(peak / 2**20),
        "rss_scan_peak_over_opened_mb": round((peak - opened) / 2**20),
        "rss_process_lifetime_peak_mb": round(lifetime_peak / 2**20),
        "planted_copies_grouped_with_original": round(together / planted, 4),
        "images_grouped_that_are_no_planted_pair": strangers,
        "groups": len(report.groups),
        "threshold": SCALE_THRESHOLD,
        "scan_memory_file_mb": round((path / "duplicates-scan.npz").stat().st_size / 2**20, 1),
    }


def scale_incremental(path: Path, n: int) -> dict[str, Any]:
    """1 % more images, half of them near copies of images not yet copied, then a scan that
    carries on from the last one."""
    sys.path.insert(0, str(ROOT / "bench"))
    import index as index_bench

    from imagefinder.duplicates import DuplicateFinder
    from imagefinder.stores.embedded import EmbeddedStore

    planted = int(n * PLANTED_SHARE)
    added = n // 100
    store = EmbeddedStore(path)
    first_source = planted  # base images not copied before
    sources = np.stack(
        [
            vector
            for rows in store.items()
            for image_id, vector, _ in rows
            if first_source <= int(image_id[3:]) < first_source + added // 2
        ]
    )
    rng = np.random.default_rng(11)
    copies = sources + 0.018 * rng.standard_normal(sources.shape).astype(np.float32)
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    fresh = index_bench.mixture(added - len(copies), seed=3)
    fill_with_hashes(store, np.concatenate([copies, fresh]).astype(np.float32), n)
    started = time.perf_counter()
    report = DuplicateFinder(store, memory=memory_of(path)).find(threshold=SCALE_THRESHOLD, views="single")
    seconds = time.perf_counter() - started
    grouped = {m.id: g.centre for g in report.groups for m in g.members}
    together = sum(
        1
        for i in range(len(copies))
        if f"img{n + i:07d}" in grouped
        and grouped[f"img{n + i:07d}"] == grouped.get(f"img{first_source + i:07d}")
    )
    store.close()
    return {
        "incremental_added": added,
        "incremental_added_copies": len(copies),
        "incremental_scan_s": round(seconds, 1),
        "incremental_queried": report.summary["queried"],
        "incremental_kept_pairs": report.summary["kept_pairs"],
        "incremental_new_copies_grouped_with_original": round(together / len(copies), 4),
        "incremental_groups": len(report.groups),
        "incremental_rss_process_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10),
    }


def scale(n: int, work: Path) -> dict[str, Any]:
    """Build and scan in child processes, so each one's memory is its own."""
    path = work / "scale-index"
    result: dict[str, Any] = {
        "n": n,
        "dim": 256,
        "data": "mixture of 1000 Gaussians, spread 0.8 (bench/index.py)",
    }
    for step in ("build", "scan", "incremental"):
        done = subprocess.run(
            [sys.executable, __file__, "--child", step, "--path", str(path), "--scale", str(n)],
            check=True,
            capture_output=True,
            text=True,
        )
        result.update(json.loads(done.stdout.strip().splitlines()[-1]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--benchmarks", type=Path, default=ROOT.parent / "shared" / "benchmarks")
    parser.add_argument(
        "--peers-python", type=Path, default=ROOT / "bench" / ".venv-peers" / "bin" / "python"
    )
    parser.add_argument("--scale", type=int, default=1_000_000)
    parser.add_argument("--parts", default="quality,calibration,scale")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "duplicates.json")
    parser.add_argument("--child", choices=["build", "scan", "incremental"])
    parser.add_argument("--path", type=Path)
    parser.add_argument("--encoder-onnx", type=Path, help="Score this fine-tuned model in the quality part.")
    parser.add_argument(
        "--finetune",
        action="store_true",
        help="Quality part: also fine-tune on the indexed images (self-supervised, --apply) and scan again.",
    )
    args = parser.parse_args()
    if args.encoder_onnx and args.finetune:
        parser.error("--finetune trains from the default model's ImageNet weights: leave out --encoder-onnx")
    sys.path.insert(0, str(ROOT))
    from imagefinder.threads import single_threaded_blas

    if args.child:
        single_threaded_blas()
        step = {"build": scale_build, "scan": scale_scan, "incremental": scale_incremental}[args.child]
        print(json.dumps(step(args.path, args.scale)))  # noqa: T201
        return
    single_threaded_blas()
    parts = args.parts.split(",")
    output: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "processor": platform.machine(),
            "cpus": os.cpu_count(),
        },
    }
    if args.out.exists():  # parts not rerun keep their last figures
        output = {**json.loads(args.out.read_text()), **output}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "quality" in parts or "calibration" in parts:
            if not (args.benchmarks / "near_duplicate").is_dir():
                sys.exit(f"no development benchmark at {args.benchmarks} (it lives in ../shared/benchmarks)")
        if "quality" in parts:
            output["quality"] = quality(
                args.benchmarks, work, args.peers_python, args.encoder_onnx, args.finetune
            )
            if args.encoder_onnx:
                output["quality"]["encoder_onnx"] = {
                    "file": str(args.encoder_onnx),
                    "version": finetuned_encoder(args.encoder_onnx).info.version,
                }
            for name, row in output["quality"]["rows"].items():
                print(name, {k: row.get(k) for k in ("precision", "recall", "f1", "error")})  # noqa: T201
        if "calibration" in parts:
            output["calibration"] = calibration(args.benchmarks, work)
            print(json.dumps(output["calibration"], indent=1))  # noqa: T201
        if "scale" in parts:
            output["scale"] = scale(args.scale, work)
            print(output["scale"])  # noqa: T201
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(output, indent=1))
    print(f"written to {args.out}")  # noqa: T201


if __name__ == "__main__":
    main()
