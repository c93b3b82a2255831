"""A set of real image embeddings for `bench/index.py`: the dev benchmark's collection photos
(both tasks) under many seeded real-world edits (`training.augment.RealWorldEdits`), embedded
once with the default encoder and whitened to 256 dimensions the way the service does, then
cached under bench/cache/ (not committed). Queries are further edits of the same photos with
another seed, so each query's true neighbours are other edits of its photo, as with real copies.

usage: python bench/real_embeddings.py [--n 100000] [--if-missing]   (builds the cache index.py reads)
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / "cache"
PHOTOS = ROOT.parent / "shared" / "benchmarks"
QUERIES = 500
DIMS = 256


def cache_path(n: int) -> Path:
    return CACHE / f"real_edits_{n}.npz"


def load(n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(vectors (n, 256), queries (500, 256)), from the first cache holding at least n."""
    for path in sorted(CACHE.glob("real_edits_*.npz"), key=lambda p: int(p.stem.split("_")[-1])):
        if int(path.stem.split("_")[-1]) >= n:
            with np.load(path) as data:
                return data["vectors"][:n].copy(), data["queries"].copy()
    return None


def build(n: int) -> Path:
    from PIL import Image

    from imagefinder.config import Settings
    from imagefinder.encoders.base import embed_images
    from imagefinder.threads import single_threaded_blas
    from imagefinder.training.augment import RealWorldEdits, work_image
    from imagefinder.whitening import fit_whitening
    from imagefinder.wiring import build_configured_encoder

    single_threaded_blas()
    files = sorted(PHOTOS.glob("*/collection/*"))
    if not files:
        sys.exit(f"no photos under {PHOTOS}")
    photos = []
    for path in files:
        with Image.open(path) as opened:
            photos.append(work_image(opened.convert("RGB")))
    encoder = build_configured_encoder(Settings())
    edits = RealWorldEdits()

    def embedded(count: int, seed: int) -> np.ndarray:
        rng = random.Random(seed)
        out = np.empty((count, encoder.info.dim), dtype=np.float32)
        started = time.perf_counter()
        for start in range(0, count, 64):
            views = []
            for i in range(start, min(count, start + 64)):
                photo = photos[i % len(photos)]
                views.append(edits(photo, rng, [photos[rng.randrange(len(photos))]]))
            out[start : start + len(views)] = embed_images(encoder, views)
            if start % 6400 == 0:
                rate = (start + len(views)) / (time.perf_counter() - started)
                sys.stderr.write(f"{start + len(views)}/{count} ({rate:.0f}/s)\n")
        return out

    raw = embedded(n, seed=1)
    queries = embedded(QUERIES, seed=2)
    projection = fit_whitening(raw[: min(n, 50_000)], max_dims=DIMS)
    assert projection is not None
    mean, matrix = projection

    def whitened(vectors: np.ndarray) -> np.ndarray:
        out = (vectors - mean) @ matrix
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)

    CACHE.mkdir(parents=True, exist_ok=True)
    target = cache_path(n)
    np.savez(target, vectors=whitened(raw), queries=whitened(queries))
    return target


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--if-missing", action="store_true", help="Do nothing when the cache holds n.")
    args = parser.parse_args()
    if args.if_missing and load(args.n) is not None:
        return
    sys.stdout.write(f"{build(args.n)}\n")


if __name__ == "__main__":
    main()
