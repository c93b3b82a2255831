"""Which extra query views pay off: a sweep on the development benchmark.

Every query of ../shared/benchmarks is embedded once under 39 views (the plain image, two turns,
and square-ish regions of 0.4, 0.5, 0.6 and 0.7 of the side on a 3 x 3 grid of positions); each
configuration is then scored in numpy, with the collection whitened as the service does and the
copy threshold calibrated the same way. "adaptive" configurations add their views only for
queries whose plain view finds no result above the copy threshold, as `query_views=adaptive`
does; `views_per_query` counts encoder runs. The last rows vary the two penalties of the layout
in use (turned views, regions).

usage: python bench/query_views_sweep.py [--benchmarks ../shared/benchmarks] [--out FILE]  (~7 min)
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from imagefinder.calibration import copy_threshold
from imagefinder.config import Settings
from imagefinder.encoders.base import l2_normalise
from imagefinder.evaluation.metrics import full_report
from imagefinder.evaluation.runner import read_ground_truth
from imagefinder.images import ImageLimits, decode_image
from imagefinder.threads import single_threaded_blas
from imagefinder.whitening import fit_whitening
from imagefinder.wiring import build_configured_encoder

ROOT = Path(__file__).resolve().parents[1]
SIDES = (0.4, 0.5, 0.6, 0.7)
CORNERS, CENTRE = [(0, 0), (0, 2), (2, 0), (2, 2)], [(1, 1)]
GRID = [(row, col) for row in range(3) for col in range(3)]
FAMILIES = ("paste", "combo_hard", "mirror_rot90", "screenshot", "crop_strong")


def all_views(image: Image.Image) -> list[Image.Image]:
    views = [image, image.transpose(Image.Transpose.TRANSPOSE), image.transpose(Image.Transpose.TRANSVERSE)]
    width, height = image.size
    for side in SIDES:
        steps = (0.0, (1 - side) / 2, 1 - side)
        for top in steps:
            for left in steps:
                box = (
                    int(left * width),
                    int(top * height),
                    int((left + side) * width),
                    int((top + side) * height),
                )
                views.append(image.crop(box))
    return views


def regions(side: float, cells: list[tuple[int, int]]) -> list[int]:
    """Indices into all_views() of the regions of `side` at grid `cells`."""
    return [3 + SIDES.index(side) * 9 + row * 3 + col for row, col in cells]


class Task:
    """One benchmark task: whitened scores of every (query, view, collection image)."""

    def __init__(self, encoder, folder: Path) -> None:  # type: ignore[no-untyped-def]
        limits = ImageLimits()

        def embed(images: list[Image.Image]) -> NDArray[np.float32]:
            return encoder.embed_arrays(np.stack([encoder.preprocess(image) for image in images]))

        def load(path: Path) -> Image.Image:
            return decode_image(path.read_bytes(), limits, str(path), encoder.min_short_side)

        collection = sorted((folder / "collection").iterdir())
        queries = sorted((folder / "queries").iterdir())
        raw = np.concatenate(
            [embed([load(p) for p in collection[i : i + 32]]) for i in range(0, len(collection), 32)]
        )
        views = np.stack([embed(all_views(load(p))) for p in queries])
        mean, projection = fit_whitening(raw)  # type: ignore[misc]
        stored = l2_normalise((raw - mean) @ projection)
        flat = l2_normalise((views.reshape(-1, views.shape[-1]) - mean) @ projection)  # l2_normalise is 2-d
        self.scores = np.einsum("qvd,cd->qvc", flat.reshape(len(queries), views.shape[1], -1), stored)
        self.threshold = copy_threshold(stored, whitened=True)
        self.collection = [p.name for p in collection]
        self.queries = [p.name for p in queries]
        self.truth = read_ground_truth(folder / "ground_truth.csv")

    def evaluate(
        self, extra: list[int], penalties: list[float], adaptive: bool, groups: dict[str, str]
    ) -> dict:  # type: ignore[type-arg]
        rankings, runs = {}, 0
        offsets = np.array(penalties, dtype=np.float32)[:, None]
        for i, query in enumerate(self.queries):
            scores = self.scores[i, 0]
            runs += 1
            if extra and (not adaptive or scores.max() < self.threshold):
                scores = np.maximum(scores, (self.scores[i, extra] - offsets).max(axis=0))
                runs += len(extra)
            order = np.argsort(-scores)
            rankings[query] = [(self.collection[j], float(scores[j])) for j in order]
        report = full_report(self.truth, rankings, groups or None)
        report["views_per_query"] = round(runs / len(self.queries), 3)
        return report


def configurations() -> list[tuple[str, list[int], list[float], bool]]:
    turns = [1, 2]
    out: list[tuple[str, list[int], list[float], bool]] = [
        ("plain", [], [], False),
        ("turns always", turns, [0.1, 0.1], False),
        ("adaptive turns", turns, [0.1, 0.1], True),
    ]
    for penalty in (0.05, 0.1):
        for side in SIDES:
            for name, cells in (("corners", CORNERS), ("corners+centre", CORNERS + CENTRE), ("3x3", GRID)):
                extra = regions(side, cells)
                label = f"adaptive turns + {side} {name}, region penalty {penalty}"
                out.append((label, turns + extra, [0.1, 0.1] + [penalty] * len(extra), True))
        extra = regions(0.5, CORNERS + CENTRE)
        out.append((f"adaptive 0.5 corners+centre only, penalty {penalty}", extra, [penalty] * 5, True))
        out.append(
            (
                f"always turns + 0.5 corners+centre, penalty {penalty}",
                turns + extra,
                [0.1, 0.1] + [penalty] * 5,
                False,
            )
        )
    # The layout in use, with its two penalties varied: the turned views' penalty was first
    # chosen before the whitening was regularised, which moved every score.
    extra = regions(0.5, CORNERS + CENTRE)
    for turn in (0.0, 0.03, 0.05, 0.07, 0.1, 0.15):
        for penalty in (0.03, 0.05, 0.07):
            label = f"adaptive turns + 0.5 corners+centre, turn penalty {turn}, region penalty {penalty}"
            out.append((label, turns + extra, [turn, turn] + [penalty] * 5, True))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--benchmarks", type=Path, default=ROOT.parent / "shared" / "benchmarks")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "query_views_sweep.json")
    args = parser.parse_args()
    single_threaded_blas()  # as the CLI and the server run
    if not (args.benchmarks / "score.py").is_file():
        sys.exit(f"no development benchmark at {args.benchmarks} (it lives in ../shared/benchmarks)")
    encoder = build_configured_encoder(Settings())
    with open(args.benchmarks / "near_duplicate" / "query_transforms.csv", newline="") as handle:
        families = {row["query_file"]: row["family"] for row in csv.DictReader(handle)}
    near, same = (
        Task(encoder, args.benchmarks / "near_duplicate"),
        Task(encoder, args.benchmarks / "same_class"),
    )
    rows = []
    for label, extra, penalties, adaptive in configurations():
        nd = near.evaluate(extra, penalties, adaptive, families)
        sc = same.evaluate(extra, penalties, adaptive, {})
        row = {
            "configuration": label,
            "near_duplicate": {key: nd[key] for key in ("recall@1", "mAP", "uAP", "views_per_query")}
            | {family: nd["by_group"][family]["recall@1"] for family in FAMILIES},
            "same_class": {key: sc[key] for key in ("mAP", "precision@10", "views_per_query")},
        }
        rows.append(row)
        n, s = row["near_duplicate"], row["same_class"]
        print(  # noqa: T201
            f"{label:58s} R@1 {n['recall@1']:.3f} uAP {n['uAP']:.3f} views {n['views_per_query']:.2f} | "
            f"same_class mAP {s['mAP']:.3f} views {s['views_per_query']:.2f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"encoder": encoder.info.name, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
