"""A calibrated "is this a copy?" threshold, from the collection's own statistics.

Each collection image's nearest *other* image gives the score of two distinct images that look
alike in this collection (bursts of similar shots, the same scene twice, cut-outs on the same
plain background). A copy of an image should score above almost all of them, so the threshold is
a high quantile (0.95) of those nearest-neighbour scores, kept within [0.3, 0.95] as a sanity
bound. It is computed in the space searched (whitened, when whitening is on), where scores run
lower than raw cosines. One fixed threshold for every collection merges bursts with true
duplicates in some and misses copies in others; this one moves with the collection. Dev-benchmark
precision and recall are in bench/results/dev_benchmark*.json ("copy_signal").
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

QUANTILE = 0.95
LOWEST, HIGHEST = 0.3, 0.95
# Fewer images than this give no useful statistics: use the value measured on the dev benchmark.
MIN_IMAGES = 20
DEFAULT_THRESHOLD = 0.72


def copy_threshold(
    vectors: NDArray[np.float32], sample: int = 2000, reference: int = 50_000, seed: int = 0
) -> float:
    """The threshold for a collection of L2-normalised `vectors` (n, dim). Large collections are
    sampled: `sample` queries against at most `reference` images (both with a fixed seed)."""
    n = len(vectors)
    if n < MIN_IMAGES:
        return DEFAULT_THRESHOLD
    rng = np.random.default_rng(seed)
    queries = rng.choice(n, size=min(sample, n), replace=False)
    pool = np.sort(rng.choice(n, size=min(reference, n), replace=False))
    nearest = np.full(len(queries), -1.0, dtype=np.float32)
    for start in range(0, len(queries), 256):
        rows = queries[start : start + 256]
        scores = vectors[rows] @ vectors[pool].T
        scores[rows[:, None] == pool[None, :]] = -1.0  # not itself
        nearest[start : start + 256] = scores.max(axis=1)
    return float(np.clip(np.quantile(nearest, QUANTILE), LOWEST, HIGHEST))
