"""Could the view gate read features that fine-tuning leaves alone? A study, not a product path.

The view gate (`imagefinder.view_gate`) reads the encoder's vector to tell a pasted, framed or
turned query from a plain one. Self-supervised fine-tuning trains the encoder to see a pasted
copy as its original, which also hides from its vector that a query is pasted. The stem and
early blocks are never trained (`TrainSettings.train_from`), so their pooled feature map would
serve the base and every fine-tuned version alike. This fits the gate's own logistic regression,
on ImageFinder's own edits (`view_gate.gate_views`: composite against plain views) of 100 photos
of the dev near-duplicate collection, on each kind of feature of the base network (fp32, torch),
and scores held-out edits of 100 other photos: ROC AUC, and the share of composite and of plain
views at or above the gate's threshold. No benchmark query is looked at.

usage: python bench/gate_features.py [--benchmarks ../shared/benchmarks]
                                     [--out bench/results/gate_features.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from PIL import Image

from imagefinder.encoders.efficientnet_lite import load_pretrained_lite0
from imagefinder.encoders.lite0 import PREPROCESS, lite0_weights_path
from imagefinder.encoders.preprocess import resize_crop_normalise
from imagefinder.training.augment import work_image
from imagefinder.training.trainer import TrainSettings
from imagefinder.view_gate import gate_views, logistic_regression

THRESHOLD = 0.8  # the gate's fixed threshold when this study ran; it is now set per fit

ROOT = Path(__file__).resolve().parents[1]
BATCH = 32


def features(trunk: torch.nn.Module, images: list[Image.Image], cut: int) -> dict[str, NDArray[np.float32]]:
    """Per image: the frozen prefix's feature map pooled (mean; mean and a 2x2 grid of means;
    GeM p=3) and the whole network's vector (GeM, L2), as the base encoder makes it."""
    parts: dict[str, list[NDArray[np.float32]]] = {}
    for start in range(0, len(images), BATCH):
        pixels = np.stack([resize_crop_normalise(i, **PREPROCESS) for i in images[start : start + BATCH]])  # type: ignore[arg-type]
        with torch.no_grad():
            x = F.relu6(trunk._bn0(trunk._conv_stem(torch.from_numpy(pixels))))  # type: ignore[operator]
            for block in trunk._blocks[:cut]:  # type: ignore[index]
                x = block(x)
            prefix = x.clamp(min=1e-6)
            for block in trunk._blocks[cut:]:  # type: ignore[index]
                x = block(x)
            final = F.relu6(trunk._bn1(trunk._conv_head(x))).clamp(min=1e-6)  # type: ignore[operator]
            found = {
                "prefix_mean": prefix.mean(dim=(2, 3)),
                "prefix_mean_grid2": torch.cat(
                    [prefix.mean(dim=(2, 3)), F.adaptive_avg_pool2d(prefix, 2).flatten(1)], 1
                ),
                "prefix_gem": prefix.pow(3).mean(dim=(2, 3)).pow(1 / 3),
                "final_vector": F.normalize(final.pow(3).mean(dim=(2, 3)).pow(1 / 3), dim=1),
            }
        for name, value in found.items():
            parts.setdefault(name, []).append(value.numpy())
    return {name: np.concatenate(values) for name, values in parts.items()}


def auc(scores: NDArray[np.float64], labels: NDArray[np.float32]) -> float:
    positive, negative = scores[labels == 1], scores[labels == 0]
    return float(
        (positive[:, None] > negative[None, :]).mean() + 0.5 * (positive[:, None] == negative[None, :]).mean()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--benchmarks", type=Path, default=ROOT.parent / "shared" / "benchmarks")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gate_features.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    trunk = load_pretrained_lite0(lite0_weights_path())
    cut = TrainSettings().train_from
    files = sorted((args.benchmarks / "near_duplicate" / "collection").iterdir())
    photos = [work_image(Image.open(path)) for path in random.Random(0).sample(files, 200)]
    fitting, testing = gate_views(photos[:100], 0), gate_views(photos[100:], 1)
    fit_views, fit_labels = fitting.images, fitting.labels
    test_views, test_labels = testing.images, testing.labels
    fit, test = features(trunk, fit_views, cut), features(trunk, test_views, cut)
    rows = {}
    for name in fit:
        weights, bias = logistic_regression(fit[name], fit_labels)
        probability = 1.0 / (1.0 + np.exp(-(test[name].astype(np.float64) @ weights + bias)))
        rows[name] = {
            "dims": int(fit[name].shape[1]),
            "held_out_auc": round(auc(probability, test_labels), 4),
            "composite_at_threshold": round(float((probability[test_labels == 1] >= THRESHOLD).mean()), 4),
            "plain_at_threshold": round(float((probability[test_labels == 0] >= THRESHOLD).mean()), 4),
        }
        print(name, rows[name])  # noqa: T201
    result = {
        "machine": {"python": platform.python_version(), "processor": platform.machine()},
        "command": " ".join(["bench/gate_features.py", *sys.argv[1:]]),
        "prefix_blocks": cut,
        "threshold": THRESHOLD,
        "fit_views": len(fit_views),
        "held_out_views": len(test_views),
        "features": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written to {args.out}")  # noqa: T201


if __name__ == "__main__":
    main()
