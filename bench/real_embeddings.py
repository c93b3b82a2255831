"""A set of real image embeddings for `bench/index.py`: the dev benchmark's collection photos
(both tasks) under many seeded real-world edits (`training.augment.RealWorldEdits`), embedded
with the default encoder and whitened to 256 dimensions the way the service does, then cached
under bench/cache/ (not committed). Queries are further edits of the same photos with another
seed, so each query's true neighbours are other edits of its photo, as with real copies.

The first SEQUENCE_ROWS rows are embedded in one seeded sequence (a smaller cache is a prefix
of it). Rows beyond them are made in seeded parts of 10,000, written to
bench/cache/real_edits_parts/ as they finish, so a run that is stopped resumes where it was; each
part is one process pinned to one core. They are whitened with the sequence's projection, which
is recovered by embedding the sequence's first rows again (and checked against the cache).

usage: python bench/real_embeddings.py [--n 100000] [--if-missing]   (builds the cache index.py reads)
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / "cache"
PARTS = CACHE / "real_edits_parts"
PHOTOS = ROOT.parent / "shared" / "benchmarks"
QUERIES = 500
DIMS = 256
FIT_ROWS = 50_000  # rows the projection is fitted on
PART_ROWS = 10_000
SEQUENCE_ROWS = 300_000


def cache_path(n: int) -> Path:
    return CACHE / f"real_edits_{n}.npz"


def cached_sizes() -> list[int]:
    return sorted(int(path.stem.split("_")[-1]) for path in CACHE.glob("real_edits_*.npz"))


def load(n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(vectors (n, 256), queries (500, 256)), from the first cache holding at least n."""
    for size in cached_sizes():
        if size >= n:
            with np.load(cache_path(size)) as data:
                return data["vectors"][:n].copy(), data["queries"].copy()
    return None


class Embedder:
    """The photos, the edits and the default encoder, loaded once per process."""

    def __init__(self) -> None:
        from PIL import Image

        from imagefinder.config import Settings
        from imagefinder.threads import single_threaded_blas
        from imagefinder.training.augment import RealWorldEdits, work_image
        from imagefinder.wiring import build_configured_encoder

        single_threaded_blas()
        files = sorted(PHOTOS.glob("*/collection/*"))
        if not files:
            sys.exit(f"no photos under {PHOTOS}")
        self.photos = []
        for path in files:
            with Image.open(path) as opened:
                self.photos.append(work_image(opened.convert("RGB")))
        self.encoder = build_configured_encoder(Settings())
        self.edits = RealWorldEdits()

    def embedded(self, rows: range, rng: random.Random, log: bool = True) -> np.ndarray:
        """Raw embeddings of rows (photo = row mod photo count), each under edits drawn from rng."""
        from imagefinder.encoders.base import embed_images

        out = np.empty((len(rows), self.encoder.info.dim), dtype=np.float32)
        started = time.perf_counter()
        for start in range(0, len(rows), 64):
            views = []
            for row in rows[start : start + 64]:
                photo = self.photos[row % len(self.photos)]
                views.append(self.edits(photo, rng, [self.photos[rng.randrange(len(self.photos))]]))
            out[start : start + len(views)] = embed_images(self.encoder, views)
            if log and start % 6400 == 0:
                rate = (start + len(views)) / (time.perf_counter() - started)
                sys.stderr.write(f"{start + len(views)}/{len(rows)} ({rate:.0f}/s)\n")
        return out


Projection = tuple[np.ndarray, np.ndarray]


def fitted(raw: np.ndarray) -> Projection:
    from imagefinder.whitening import fit_whitening

    projection = fit_whitening(raw[:FIT_ROWS], max_dims=DIMS)
    assert projection is not None
    return projection


def whitened(vectors: np.ndarray, projection: Projection) -> np.ndarray:
    mean, matrix = projection
    out = (vectors - mean) @ matrix
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def build(n: int) -> Path:
    """A fresh cache of n rows: one seeded sequence (seed 1), queries seed 2."""
    embedder = Embedder()
    raw = embedder.embedded(range(n), random.Random(1))
    queries = embedder.embedded(range(QUERIES), random.Random(2))
    projection = fitted(raw)
    if n >= FIT_ROWS:  # what `extend` would otherwise embed again
        PARTS.mkdir(parents=True, exist_ok=True)
        np.save(PARTS / f"head_{FIT_ROWS}.npy", raw[:FIT_ROWS])
    CACHE.mkdir(parents=True, exist_ok=True)
    target = cache_path(n)
    np.savez(target, vectors=whitened(raw, projection), queries=whitened(queries, projection))
    return target


_WORKER: Embedder | None = None


def _start_worker(cores: Any) -> None:
    global _WORKER
    core = cores.get()
    os.sched_setaffinity(0, {core})  # one core each: the encoder then runs one 1-thread session
    _WORKER = Embedder()


def _make_part(part: int) -> int:
    assert _WORKER is not None
    rows = range(part * PART_ROWS, (part + 1) * PART_ROWS)
    raw = _WORKER.embedded(rows, random.Random(f"real-edits-part-{part}"), log=False)
    tmp = PARTS / f"part_{part:05d}.tmp.npy"
    np.save(tmp, raw)
    tmp.replace(PARTS / f"part_{part:05d}.npy")  # a part is either whole or absent
    return part


def extend(base: int, n: int) -> Path:
    """The cache of the first `base` rows extended to n rows (see the module docstring)."""
    if n % PART_ROWS:
        sys.exit(f"rows beyond {SEQUENCE_ROWS} are made in parts of {PART_ROWS}: ask for a multiple")
    PARTS.mkdir(parents=True, exist_ok=True)
    head_path = PARTS / f"head_{FIT_ROWS}.npy"
    if not head_path.exists():
        sys.stderr.write(f"re-embedding the first {FIT_ROWS} rows to recover the projection\n")
        head = Embedder().embedded(range(FIT_ROWS), random.Random(1))
        np.save(PARTS / "head.tmp.npy", head)
        (PARTS / "head.tmp.npy").replace(head_path)
    head = np.load(head_path)
    projection = fitted(head)
    with np.load(cache_path(base)) as data:
        vectors, queries = data["vectors"], data["queries"]
        gap = float(np.abs(whitened(head[:2000], projection) - vectors[:2000]).max())
        if gap > 1e-3:
            sys.exit(f"the re-embedded rows differ from the cache (max {gap:.2g}): build afresh")
        missing = [
            part
            for part in range(base // PART_ROWS, n // PART_ROWS)
            if not (PARTS / f"part_{part:05d}.npy").exists()
        ]
        cores = sorted(os.sched_getaffinity(0))
        context = multiprocessing.get_context("spawn")
        queue = context.Manager().Queue()
        for core in cores:
            queue.put(core)
        started = time.perf_counter()
        with context.Pool(len(cores), initializer=_start_worker, initargs=(queue,)) as pool:
            for done, part in enumerate(pool.imap_unordered(_make_part, missing), start=1):
                rate = done * PART_ROWS / (time.perf_counter() - started)
                sys.stderr.write(f"part {part} ({done}/{len(missing)}, {rate:.0f} rows/s)\n")
        extra = [np.load(PARTS / f"part_{part:05d}.npy") for part in range(base // PART_ROWS, n // PART_ROWS)]
        target = cache_path(n)
        np.savez(
            target,
            vectors=np.concatenate([vectors, whitened(np.concatenate(extra), projection)]),
            queries=queries,
        )
    return target


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--if-missing", action="store_true", help="Do nothing when the cache holds n.")
    args = parser.parse_args()
    if args.if_missing and load(args.n) is not None:
        return
    if args.n <= SEQUENCE_ROWS:
        target = build(args.n)
    else:
        if not cache_path(SEQUENCE_ROWS).exists():
            build(SEQUENCE_ROWS)
        target = extend(SEQUENCE_ROWS, args.n)
    sys.stdout.write(f"{target}\n")


if __name__ == "__main__":
    main()
