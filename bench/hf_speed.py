"""Encoder-only CPU speed of Hugging Face models next to the default encoder, side by side in one
run: images/s on the same preprocessed batches (batch 32, after a warm-up), and the runtime used.

Without Hub access it measures the tiny random ViT, CLIP and DINOv2 models the tests build (they
show the plumbing's overhead, not a real model's speed); pass --models hf:<id or folder> for others.

usage: python bench/hf_speed.py [--models hf:...,hf:...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def images_per_s(encoder, images: list[Image.Image], rounds: int = 5) -> float:  # type: ignore[no-untyped-def]
    batch = np.stack([encoder.preprocess(image) for image in images])
    encoder.embed_arrays(batch)  # warm-up
    started = time.perf_counter()
    for _ in range(rounds):
        encoder.embed_arrays(batch)
    return round(rounds * len(batch) / (time.perf_counter() - started), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", help="comma-separated hf:... names (default: the tests' tiny models)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "hf_speed.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from imagefinder.demo import write_demo_collection
    from imagefinder.encoders import build_encoder

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        photos = write_demo_collection(work / "photos")
        images = [Image.open(p).convert("RGB") for p in (photos * 2)[:32]]
        if args.models:
            names = args.models.split(",")
        else:
            from tests.hf_models import build_tiny_models

            names = [f"hf:{path}" for path in build_tiny_models(work / "tiny").values()]
        cache = Path("~/.imagefinder/models").expanduser()
        default = build_encoder("efficientnet-lite0", cache)
        baseline = images_per_s(default, images)
        rows = [
            {
                "model": "efficientnet-lite0",
                "runtime": "onnx",
                "dim": default.info.dim,
                "images_per_s": baseline,
                "relative_to_default": 1.0,
            }
        ]
        for name in names:
            encoder = build_encoder(name, work / "cache")
            speed = images_per_s(encoder, images)
            label = name if args.models else "tiny-" + Path(name[3:]).name
            rows.append(
                {
                    "model": label,
                    "runtime": getattr(encoder, "runtime", "?"),
                    "dim": encoder.info.dim,
                    "images_per_s": speed,
                    "relative_to_default": round(speed / baseline, 2),
                }
            )
    result = {"batch": 32, "rows": rows, "machine": {"processor": platform.machine(), "cpus": os.cpu_count()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    for _row in rows:
        pass  # noqa: T201


if __name__ == "__main__":
    main()
