"""After self-supervised fine-tuning, is there a cheaper second pass, or a larger budget for the
view gate, that brings `adaptive` up to `thorough`? A study, not a product path.

For a fine-tuned int8 ONNX file (or `base`), the dev near-duplicate collection is indexed through
the service `imagefinder serve` builds (whitening, thresholds and gate fitted as in real use).
Per query that the first pass does not settle, it records the top-1 of each extra view alone
(`imagefinder.views`: two turns, five half-size regions) and of the five regions GeM-pooled
from the first pass's own last feature map (an extra output of the same int8 graph, so free at
query time). Scored offline:

- **which views**: `thorough` (all seven), the regions alone, the turns alone, the centre region
  alone, one or two regions chosen by their pooled descriptor's best score (one or two encoder
  runs instead of seven), the pooled descriptors searched directly (no extra run), and an oracle
  that knows which single view is right;
- **what budget**: the product's vector gate fitted on `--draws` seeded draws of 200 collection
  photos (as `fit_view_gate` does), its threshold set at several shares of held-out plain photos
  (the product's 1/14 and larger ones), each query taking the second pass when unsettled and let
  through; next to it, what the seven views cost this encoder here against one view (median over
  collection photos), which is the share the cost rule (1 + cost * share <= 1.5) would allow.

usage: python bench/second_pass_choices.py --model base|FILE [--draws 5]
                                           [--benchmarks ../shared/benchmarks] [--out FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from duplicates import finetuned_encoder  # noqa: E402
from gate_fits import BATCH, offline_score  # noqa: E402

from imagefinder.config import Settings  # noqa: E402
from imagefinder.encoders.base import embed_images  # noqa: E402
from imagefinder.encoders.lite0 import CROP, SHORT_SIDE  # noqa: E402
from imagefinder.encoders.onnx_runtime import OnnxEncoder, _session  # noqa: E402
from imagefinder.evaluation.runner import read_ground_truth  # noqa: E402
from imagefinder.service import ImageFinder  # noqa: E402
from imagefinder.sources import FolderSource  # noqa: E402
from imagefinder.training.augment import work_image  # noqa: E402
from imagefinder.view_gate import (  # noqa: E402
    PLAIN_SHARE,
    SAMPLE,
    budget_threshold,
    gate_views,
    held_out_probabilities,
    logistic_regression,
)
from imagefinder.views import REGION_ORIGINS, REGION_PENALTY, REGION_SIDE, extra_views, view_source  # noqa: E402
from imagefinder.wiring import build_configured_encoder, open_store, service_for  # noqa: E402

SHARES = (PLAIN_SHARE, 0.1, 0.125, 0.15, 0.175, 0.2, 0.25)
GEM_P = 3.0
Top = tuple[str | None, float]


def with_feature_map(encoder: OnnxEncoder, work: Path) -> Any:
    """A session of the encoder's graph that also returns the last feature map (the input of
    GeM's first power), with the session options the encoder serves with."""
    import onnx

    model = onnx.load(str(encoder.model_path))
    pow_node = next(node for node in model.graph.node if node.op_type == "Pow")
    feature_map = onnx.helper.make_tensor_value_info(pow_node.input[0], onnx.TensorProto.FLOAT, None)
    model.graph.output.append(feature_map)
    path = work / "with-feature-map.onnx"
    onnx.save(model, str(path))
    return _session(path, os.cpu_count() or 1)


def pooled_regions(image: Image.Image, feature_map: NDArray[np.float32]) -> list[NDArray[np.float32]]:
    """The five regions of `views.REGION_ORIGINS`, mapped onto the first pass's centre crop and
    GeM-pooled over the feature-map cells they cover (a region the crop cuts keeps what is left)."""
    width, height = image.size
    scale = SHORT_SIDE / min(width, height)
    resized_w, resized_h = width * scale, height * scale
    left, top = (resized_w - CROP) / 2, (resized_h - CROP) / 2
    cells = np.clip(feature_map, 0.0, None)
    _, rows, cols = cells.shape
    out = []
    for x, y in REGION_ORIGINS:

        def span(start: float, size: float, offset: float, count: int) -> tuple[int, int]:
            first = int(np.clip(np.floor((start - offset) / CROP * count), 0, count - 1))
            last = int(np.clip(np.ceil((start + size - offset) / CROP * count), first + 1, count))
            return first, last

        c0, c1 = span(x * resized_w, REGION_SIDE * resized_w, left, cols)
        r0, r1 = span(y * resized_h, REGION_SIDE * resized_h, top, rows)
        pooled = np.power(np.mean(np.power(cells[:, r0:r1, c0:c1] + 1e-6, GEM_P), axis=(1, 2)), 1 / GEM_P)
        out.append((pooled / np.linalg.norm(pooled)).astype(np.float32))
    return out


def per_query(service: ImageFinder, session: Any, task: Path) -> dict[str, Any]:
    space = service.store.search_space
    truth = read_ground_truth(task / "ground_truth.csv")
    with open(task / "query_transforms.csv") as handle:
        family = {row["query_file"]: row["family"] for row in csv.DictReader(handle)}

    def top(vector: NDArray[np.float32]) -> Top:
        hits = service.store.search(np.asarray(vector, np.float32), 1, None, None)
        return (hits[0].id, round(float(hits[0].score), 4)) if hits else (None, -1.0)

    rows = []
    for query in sorted((task / "queries").iterdir()):
        prepared = service.prepare(query.read_bytes(), str(query))
        (vector,), (feature_map,) = session.run(None, {"pixels": prepared.pixels})
        plain = top(vector)
        row: dict[str, Any] = {
            "query": query.name,
            "family": family.get(query.name, ""),
            "right": sorted(truth.get(query.name, set())),
            "settled": plain[1] >= space.in_collection_threshold,
            "plain": plain,
        }
        if not row["settled"]:
            views = [view for view, _ in extra_views(prepared.image)]
            row["views"] = [top(v) for v in embed_images(service.encoder, views)]
            row["pooled"] = [top(v) for v in pooled_regions(prepared.image, feature_map)]
        rows.append(row)
    return {"in_collection": space.in_collection_threshold, "rows": rows}


def _best(candidates: list[tuple[Top, float]]) -> str | None:
    """The id of the best candidate by score less penalty, as the service ranks views."""
    return max(candidates, key=lambda c: c[0][1] - c[1])[0][0]


def strategies() -> dict[str, Callable[[dict[str, Any]], str | None]]:
    """For an unsettled query's record: the id each way of taking a second pass puts first."""

    def plain(r: dict[str, Any]) -> list[tuple[Top, float]]:
        return [(tuple(r["plain"]), 0.0)]

    def views(r: dict[str, Any], which: list[int]) -> list[tuple[Top, float]]:
        return [(tuple(r["views"][i]), REGION_PENALTY) for i in which]

    def chosen(r: dict[str, Any], count: int) -> list[int]:
        order = np.argsort([-score for _, score in r["pooled"]], kind="stable")
        return [2 + int(i) for i in order[:count]]

    return {
        "single": lambda r: r["plain"][0],
        "thorough": lambda r: _best(plain(r) + views(r, list(range(7)))),
        "regions_only": lambda r: _best(plain(r) + views(r, [2, 3, 4, 5, 6])),
        "turns_only": lambda r: _best(plain(r) + views(r, [0, 1])),
        "centre_only": lambda r: _best(plain(r) + views(r, [6])),
        "pooled_choice_1": lambda r: _best(plain(r) + views(r, chosen(r, 1))),
        "pooled_choice_2": lambda r: _best(plain(r) + views(r, chosen(r, 2))),
        "pooled_direct": lambda r: _best(plain(r) + [(tuple(p), REGION_PENALTY) for p in r["pooled"]]),
        "oracle_one_view": lambda r: next(
            (v[0] for v in [r["plain"], *r["views"]] if v[0] in r["right"]), r["plain"][0]
        ),
    }


def score_choices(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out = {}
    for name, pick in strategies().items():
        records = [
            {
                "query": r["query"],
                "family": r["family"],
                "settled": r["settled"],
                "single_right": r["plain"][0] in r["right"],
                "thorough_right": (r["plain"][0] if r["settled"] else pick(r)) in r["right"],
            }
            for r in rows
        ]
        scores = offline_score(records, {r["query"]: True for r in rows})
        scores.pop("unsettled_let_through")
        out[name] = scores
    return out


def second_pass_cost(encoder: OnnxEncoder, photos: list[Image.Image], repeats: int = 5) -> float:
    """The seven extra views' encoder time over one view's, median over `photos` (each the
    median of `repeats` timings after a warm-up)."""
    ratios = []
    for photo in photos:
        views = [view for view, _ in extra_views(view_source(photo))]
        embed_images(encoder, [photo])
        embed_images(encoder, views)
        timed = []
        for _ in range(repeats):
            start = time.perf_counter()
            embed_images(encoder, [photo])
            one = time.perf_counter() - start
            start = time.perf_counter()
            embed_images(encoder, views)
            timed.append((time.perf_counter() - start) / one)
        ratios.append(statistics.median(timed))
    return round(statistics.median(ratios), 2)


def score_shares(
    encoder: OnnxEncoder, photos: list[Image.Image], rows: list[dict[str, Any]], task: Path, draws: int
) -> dict[str, Any]:
    """The vector gate at each share of SHARES, fitted on `draws` draws, scored offline."""
    from imagefinder.images import ImageLimits, decode_image

    queries = [task / "queries" / r["query"] for r in rows]
    decoded = [decode_image(q.read_bytes(), ImageLimits(), str(q), encoder.min_short_side) for q in queries]
    query_vectors = np.concatenate(
        [embed_images(encoder, decoded[i : i + BATCH]) for i in range(0, len(decoded), BATCH)]
    ).astype(np.float64)
    thorough = strategies()["thorough"]
    records = [
        {
            "query": r["query"],
            "family": r["family"],
            "settled": r["settled"],
            "single_right": r["plain"][0] in r["right"],
            "thorough_right": (r["plain"][0] if r["settled"] else thorough(r)) in r["right"],
        }
        for r in rows
    ]
    found: dict[str, list[dict[str, float]]] = {}
    for draw in range(draws):
        sample = random.Random(draw).sample(photos, min(SAMPLE, len(photos)))
        views = gate_views(sample, 0)
        vectors = np.concatenate(
            [embed_images(encoder, views.images[i : i + BATCH]) for i in range(0, len(views.images), BATCH)]
        )
        held = held_out_probabilities(vectors, views, 0)
        weights, bias = logistic_regression(vectors, views.labels)
        probabilities = 1 / (1 + np.exp(-(query_vectors @ weights + bias)))
        for share in SHARES:
            threshold, _ = budget_threshold(held[views.unedited], share)
            let_through = {r["query"]: bool(p >= threshold) for r, p in zip(rows, probabilities, strict=True)}
            scores = offline_score(records, let_through) | {"threshold": round(threshold, 4)}
            found.setdefault(f"{share:.4f}", []).append(scores)
            print(draw, f"{share:.4f}", scores, flush=True)  # noqa: T201
    return {
        share: {key: round(float(np.mean([d[key] for d in per_draw])), 4) for key in per_draw[0]}
        for share, per_draw in found.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="base, or a fine-tuned int8 ONNX file")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--benchmarks", type=Path, default=ROOT.parent / "shared" / "benchmarks")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "second_pass_choices.json")
    args = parser.parse_args()
    task = args.benchmarks / "near_duplicate"
    with tempfile.TemporaryDirectory(prefix="second-pass-choices-") as work:
        settings = Settings(home=Path(work) / "home")
        if args.model == "base":
            encoder = build_configured_encoder(settings)
        else:
            encoder = finetuned_encoder(Path(args.model))
        service = service_for(settings, encoder, open_store(settings))
        try:
            service.index(FolderSource(task / "collection", 10**8))
            found = per_query(service, with_feature_map(encoder, Path(work)), task)
        finally:
            service.close()
    rows = found["rows"]
    photos = [work_image(Image.open(path)) for path in sorted((task / "collection").iterdir())]
    choices = score_choices(rows)
    for name, scores in choices.items():
        print(name, scores, flush=True)  # noqa: T201
    unsettled = [r for r in rows if not r["settled"]]
    agree = sum(
        int(np.argmax([s for _, s in r["pooled"]])) == int(np.argmax([s for _, s in r["views"][2:]]))
        for r in unsettled
    )
    result = {
        "machine": {"python": platform.python_version(), "processor": platform.machine()},
        "command": " ".join(["bench/second_pass_choices.py", *sys.argv[1:]]),
        "model": args.model,
        "queries": len(rows),
        "unsettled": len(unsettled),
        "pooled_choice_is_the_best_region": agree,
        "choices": choices,
        "second_pass_cost_in_single_passes": second_pass_cost(encoder, photos[:10]),
        "gate_shares_mean_of_draws": score_shares(encoder, photos, rows, task, args.draws),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written to {args.out}")  # noqa: T201


if __name__ == "__main__":
    main()
