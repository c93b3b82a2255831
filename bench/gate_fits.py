"""After self-supervised fine-tuning, can a better view gate bring `adaptive` up to `thorough`?
A study, not a product path.

`bench/second_pass_queries.py` records, per dev near-duplicate query, whether the first pass
settles it and whether the plain view and the `thorough` second pass put the right image first.
Given that file and the same fine-tuned model, this fits view gates the way `fit_view_gate`
does (ImageFinder's own composite and plain edits of 200 collection photos, threshold at the
`PLAIN_SHARE` budget on held-out plain photos), on several seeded draws of the 200 photos, and
scores each offline: an unsettled query takes the second pass when its gate lets it through.
Three gates:

- `vector`: the product's gate (logistic regression on the encoder vector);
- `frame`: the same regression on eight numbers an encoder does not see through, read off the
  picture itself (`frame_features`: the longest straight vertical and horizontal edges, the
  flattest border bands), which a paste, a screenshot frame or a caption band leaves;
- `stacked`: a two-input regression on the held-out logits of the two.

The query vectors are the encoder's for the decoded query, as the service computes them. The
benchmark's queries are only scored, never fitted on.

usage: python bench/gate_fits.py --model FILE --per-query FILE [--draws 5]
                                 [--benchmarks ../shared/benchmarks] [--out bench/results/gate_fits.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from duplicates import finetuned_encoder  # noqa: E402

from imagefinder.encoders.base import Encoder, embed_images  # noqa: E402
from imagefinder.images import ImageLimits, decode_image  # noqa: E402
from imagefinder.training.augment import work_image  # noqa: E402
from imagefinder.view_gate import (  # noqa: E402
    PLAIN_SHARE,
    SAMPLE,
    budget_threshold,
    gate_views,
    held_out_probabilities,
    logistic_regression,
)
from imagefinder.views import view_source  # noqa: E402

BATCH = 32
FRAME_SIDE = 128  # the picture is read at this size on its long side
EDGE_STEP = 0.10  # a grey-level step (0-1) this large between neighbouring pixels is an edge
FAMILIES = ("paste", "screenshot", "mirror_rot90", "combo_hard")


def _longest_runs(edges: NDArray[np.bool_]) -> NDArray[np.int64]:
    """Per column, the longest run of edge pixels down it (gaps of one pixel bridged)."""
    bridged = edges.copy()
    bridged[1:-1] |= edges[:-2] & edges[2:]
    best = np.zeros(edges.shape[1], np.int64)
    current = np.zeros(edges.shape[1], np.int64)
    for row in bridged:
        current = np.where(row, current + 1, 0)
        best = np.maximum(best, current)
    return best


def frame_features(image: Image.Image) -> NDArray[np.float32]:
    """Eight numbers: the two longest vertical and horizontal straight edges (as a share of the
    side), the same two away from the outer pixels, and the log spread of the two flattest
    border bands (a sixteenth of the side each)."""
    grey = image.convert("L")
    grey.thumbnail((FRAME_SIDE, FRAME_SIDE), Image.Resampling.BILINEAR)
    a = np.asarray(grey, np.float32) / 255.0
    height, width = a.shape
    if min(height, width) < 8:
        return np.zeros(8, np.float32)
    vertical = _longest_runs(np.abs(np.diff(a, axis=1)) > EDGE_STEP) / height
    horizontal = _longest_runs((np.abs(np.diff(a, axis=0)) > EDGE_STEP).T) / width
    rows, cols = max(2, height // 16), max(2, width // 16)
    bands = np.sort([a[:rows].std(), a[-rows:].std(), a[:, :cols].std(), a[:, -cols:].std()])
    v, h = np.sort(vertical)[::-1], np.sort(horizontal)[::-1]
    return np.array(
        [
            v[0],
            v[1],
            h[0],
            h[1],
            np.log(bands[0] + 1e-3),
            np.log(bands[1] + 1e-3),
            vertical[2:-2].max(),
            horizontal[2:-2].max(),
        ],
        np.float32,
    )


def _logit(p: NDArray[np.float64]) -> NDArray[np.float64]:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p))


def _apply(x: NDArray[np.floating[Any]], weights: NDArray[np.float32], bias: float) -> NDArray[np.float64]:
    return np.asarray(x, np.float64) @ weights + bias


def gates(
    encoder: Encoder,
    photos: list[Image.Image],
    query_vectors: NDArray[np.float32],
    query_frames: NDArray[np.float32],
) -> dict[str, tuple[NDArray[np.float64], float, float]]:
    """Per gate: (the queries' probabilities, its threshold, the held-out plain share)."""
    views = gate_views(photos, 0)
    vectors = np.concatenate(
        [embed_images(encoder, views.images[i : i + BATCH]) for i in range(0, len(views.images), BATCH)]
    )
    frames = np.stack([frame_features(view) for view in views.images])
    out = {}
    held_logits = {}
    query_logits = {}
    for name, x, q in (("vector", vectors, query_vectors), ("frame", frames, query_frames)):
        held = held_out_probabilities(x, views, 0)
        threshold, share = budget_threshold(held[views.unedited], PLAIN_SHARE)
        weights, bias = logistic_regression(x, views.labels)
        query_logits[name] = _apply(q, weights, bias)
        held_logits[name] = _logit(held)
        out[name] = (1 / (1 + np.exp(-query_logits[name])), threshold, share)
    # The stacker is fitted on held-out logits, so neither input's fit leaks into it.
    stacked = np.stack([held_logits["vector"], held_logits["frame"]], 1)
    weights, bias = logistic_regression(stacked, views.labels, 0.01)
    held = 1 / (1 + np.exp(-_apply(stacked, weights, bias)))
    threshold, share = budget_threshold(held[views.unedited], PLAIN_SHARE)
    query_stacked = np.stack([query_logits["vector"], query_logits["frame"]], 1)
    out["stacked"] = (1 / (1 + np.exp(-_apply(query_stacked, weights, bias))), threshold, share)
    return out


def offline_score(rows: list[dict[str, Any]], let_through: dict[str, bool]) -> dict[str, float]:
    """Recall@1 overall and per family when each unsettled query takes the second pass iff
    `let_through`; and how many unsettled queries it lets through."""
    right: dict[str, list[bool]] = {}
    for row in rows:
        second = not row["settled"] and let_through[row["query"]]
        hit = bool(row["thorough_right"] if second else row["single_right"])
        right.setdefault("all", []).append(hit)
        right.setdefault(row["family"], []).append(hit)
    kept = {k: v for k, v in right.items() if k == "all" or k in FAMILIES}
    scores: dict[str, float] = {f"recall@1_{k}": round(sum(v) / len(v), 4) for k, v in kept.items()}
    scores["unsettled_let_through"] = sum(1 for r in rows if not r["settled"] and let_through[r["query"]])
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="the fine-tuned int8 ONNX file")
    parser.add_argument("--per-query", type=Path, required=True, help="bench/second_pass_queries.py's output")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--benchmarks", type=Path, default=ROOT.parent / "shared" / "benchmarks")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gate_fits.json")
    args = parser.parse_args()
    task = args.benchmarks / "near_duplicate"
    rows = json.loads(args.per_query.read_text())["rows"]
    encoder = finetuned_encoder(args.model)
    limits = ImageLimits()
    queries = [task / "queries" / row["query"] for row in rows]
    decoded = [decode_image(q.read_bytes(), limits, str(q), encoder.min_short_side) for q in queries]
    query_vectors = np.concatenate(
        [embed_images(encoder, decoded[i : i + BATCH]) for i in range(0, len(decoded), BATCH)]
    )
    query_frames = np.stack([frame_features(view_source(image)) for image in decoded])
    photos = [work_image(Image.open(path)) for path in sorted((task / "collection").iterdir())]
    unsettled = sum(1 for r in rows if not r["settled"])
    draws = []
    for draw in range(args.draws):
        sample = random.Random(draw).sample(photos, min(SAMPLE, len(photos)))
        found = {}
        fitted = gates(encoder, sample, query_vectors, query_frames)
        for name, (probabilities, threshold, share) in fitted.items():
            let_through = {r["query"]: bool(p >= threshold) for r, p in zip(rows, probabilities, strict=True)}
            found[name] = {"threshold": round(threshold, 4), "held_out_plain_share": round(share, 4)}
            found[name] |= offline_score(rows, let_through)
            print(draw, name, found[name], flush=True)  # noqa: T201
        draws.append(found)
    summary = {}
    for name in draws[0]:
        summary[name] = {
            key: {"mean": round(float(np.mean(values)), 4), "min": min(values), "max": max(values)}
            for key in draws[0][name]
            for values in [[d[name][key] for d in draws]]
        }
    result = {
        "machine": {"python": platform.python_version(), "processor": platform.machine()},
        "command": " ".join(["bench/gate_fits.py", *sys.argv[1:]]),
        "model": str(args.model),
        "queries": len(rows),
        "unsettled": unsettled,
        "single": offline_score(rows, {r["query"]: False for r in rows}),
        "thorough": offline_score(rows, {r["query"]: True for r in rows}),
        "gates": summary,
        "draws": draws,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written to {args.out}")  # noqa: T201


if __name__ == "__main__":
    main()
