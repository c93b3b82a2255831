"""Calibrated "is this a copy?" thresholds, from the collection's own statistics, in the space
searched (whitened when whitening is on, where scores run lower than raw cosines).

Two images of the collection (a duplicates scan, "more like this"): the duplicate threshold.

- The look-alikes: each sampled image's nearest *other* image gives the score of two distinct
  images that look alike in this collection (bursts of similar shots, the same scene twice,
  cut-outs on the same plain background). A copy should score above almost all of them: a high
  quantile (0.95) of those nearest-neighbour scores.
- That quantile breaks in a collection full of copies, where most nearest neighbours *are*
  copies (it climbs to their own scores: 0.95, nothing flagged), and rests on little in a small
  one. The scores of random pairs set a band that does not move with how many copies there are
  (copies are a tiny share of all pairs even in a collection full of them): `median + k * MAD`
  (MAD scaled to a standard deviation), k = FLOOR_MADS to CEILING_MADS. Whitening makes unrelated
  images near-orthogonal, so the band is narrow and about the same from one collection to
  another. The quantile is kept at or above the floor; when most images' nearest neighbour
  scores above the floor (most images have a copy), the ceiling is used instead.

A new image against the collection (`is_copy` in search results): the copy threshold. A space
learned from a few hundred images fits them closely, and an image it was not learned from scores
higher against them than they score against each other: a photo of the same kind of subject that
is no copy at all can reach 0.8. So the space is learned again without a fifth of the images, five
times over, and the held-out images' best scores against the rest give the quantile instead (up to
`HELD_OUT_UP_TO` images; in a collection full of copies, only the images without a copy are
counted: the others find their copies). The copy threshold is the higher of the two.

Raw encoder spaces (whitening off, or too few images to learn it) have no common scale: there the
nearest-neighbour quantile is used for both, at most DEFAULT_THRESHOLD (measured on the dev
benchmark): with a few dozen images, one in twenty with a copy puts the quantile on the copies.

Precision and recall of the flag on small, copy-free and copy-rich collections are in
bench/results/duplicates.json ("calibration").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

# The fewest images a whitened space is learned from (fewer stay raw).
from imagefinder.whitening import MIN_IMAGES as MIN_FIT

QUANTILE = 0.95
FLOOR_MADS, CEILING_MADS = 10.0, 11.0
LOWEST, HIGHEST = 0.3, 0.95
# Fewer images than this give no useful statistics: use the value measured on the dev benchmark.
MIN_IMAGES = 20
DEFAULT_THRESHOLD = 0.72
# The held-out check runs up to this many images (sampled): beyond, a projection learned from tens
# of thousands of images inflates a new image's scores too little to matter.
HELD_OUT_UP_TO = 20_000
HELD_OUT_FOLDS = 5
# 1.4826 * MAD estimates the standard deviation of normally distributed scores.
_MAD_TO_SIGMA = 1.4826

# A search space learned from some encoder vectors: encoder vectors -> searched vectors.
Fit = Callable[[NDArray[np.float32]], Callable[[NDArray[np.float32]], NDArray[np.float32]]]


@dataclass(frozen=True)
class Thresholds:
    copy: float  # for a query image: `is_copy` in search results
    duplicate: float  # for two images of the collection: the duplicates scan, "more like this"


def calibrate(
    raw: NDArray[np.float32],
    project: Callable[[NDArray[np.float32]], NDArray[np.float32]],
    fit: Fit | None,
    seed: int = 0,
) -> Thresholds:
    """Both thresholds for a collection whose encoder vectors are (a sample of) `raw`, searched
    through `project`; `fit` (None: a raw space) learns a space like it from other vectors."""
    searched = project(raw)
    if len(searched) < MIN_IMAGES:
        return Thresholds(DEFAULT_THRESHOLD, DEFAULT_THRESHOLD)
    alikes = look_alikes(searched, seed)
    duplicate = duplicate_threshold(alikes, whitened=fit is not None)
    # Each fold learns the space from four fifths of the images: too few to learn it, and the
    # held-out scores would be raw cosines, on another scale.
    if fit is None or len(raw) * (HELD_OUT_FOLDS - 1) < HELD_OUT_FOLDS * MIN_FIT:
        return Thresholds(duplicate, duplicate)
    # In a collection full of copies, only images without one say how a new image scores.
    without_copy = None
    if alikes.full_of_copies:
        without_copy = _nearest_of_each(searched) < duplicate
    outside = held_out_threshold(raw, fit, seed, without_copy)
    if outside is None:
        return Thresholds(duplicate, duplicate)
    return Thresholds(float(np.clip(max(duplicate, outside), LOWEST, HIGHEST)), duplicate)


def held_out_threshold(
    raw: NDArray[np.float32], fit: Fit, seed: int = 0, counted: NDArray[np.bool_] | None = None
) -> float | None:
    """The 0.95-quantile of how well an image the space was *not* learned from matches the
    collection: folds of the images are held out, the space is learned from the others, and each
    held-out image's best score against them is recorded (only the `counted` images' scores,
    when given)."""
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(raw))[:HELD_OUT_UP_TO]
    if counted is not None and int(counted[rows].sum()) < MIN_IMAGES:
        return None  # too few images without a copy to say anything
    best = []
    for fold in range(HELD_OUT_FOLDS):
        held = rows[fold::HELD_OUT_FOLDS]
        rest = np.setdiff1d(rows, held)
        if counted is not None:
            held = held[counted[held]]
        if len(held):
            project = fit(raw[rest])
            best.append((project(raw[held]) @ project(raw[rest]).T).max(axis=1))
    return float(np.quantile(np.concatenate(best), QUANTILE))


def _nearest_of_each(vectors: NDArray[np.float32]) -> NDArray[np.float32]:
    """Every image's score with its nearest other image, exactly (a sample of at most the
    maintenance's FIT_SAMPLE vectors: seconds)."""
    nearest = np.empty(len(vectors), dtype=np.float32)
    for start in range(0, len(vectors), 1024):
        scores = vectors[start : start + 1024] @ vectors.T
        scores[np.arange(len(scores)), np.arange(start, start + len(scores))] = -1.0
        nearest[start : start + 1024] = scores.max(axis=1)
    return nearest


def copy_threshold(
    vectors: NDArray[np.float32],
    whitened: bool,
    sample: int = 2000,
    reference: int = 50_000,
    seed: int = 0,
) -> float:
    """The in-collection threshold for L2-normalised `vectors` (n, dim) as searched (`whitened`
    or not). Large collections are sampled: `sample` queries against at most `reference` images
    (both with a fixed seed)."""
    if len(vectors) < MIN_IMAGES:
        return DEFAULT_THRESHOLD
    return duplicate_threshold(look_alikes(vectors, seed, sample, reference), whitened)


@dataclass(frozen=True)
class LookAlikes:
    """How alike distinct images of a collection are, in the space searched."""

    nearest: NDArray[np.float32]  # each sampled image's score with its nearest other image
    floor: float  # the band of random pairs' scores (`unrelated_band`)
    ceiling: float

    @property
    def full_of_copies(self) -> bool:
        """Most nearest neighbours above the floor: they are copies, and so is their quantile
        (and held-out images would find their copies among the rest)."""
        return float(np.median(self.nearest)) >= self.floor


def look_alikes(
    vectors: NDArray[np.float32], seed: int = 0, sample: int = 2000, reference: int = 50_000
) -> LookAlikes:
    rng = np.random.default_rng(seed)
    nearest = nearest_scores(vectors, rng, sample, reference)
    return LookAlikes(nearest, *unrelated_band(vectors, rng))


def duplicate_threshold(alikes: LookAlikes, whitened: bool) -> float:
    threshold = float(np.quantile(alikes.nearest, QUANTILE))
    if whitened:
        threshold = alikes.ceiling if alikes.full_of_copies else max(threshold, alikes.floor)
    else:
        # No common scale to bound it by: at most the value measured on the dev benchmark, so
        # that a small collection where one image in twenty has a copy is not calibrated to the
        # copies' own scores.
        threshold = min(threshold, DEFAULT_THRESHOLD)
    return float(np.clip(threshold, LOWEST, HIGHEST))


def nearest_scores(
    vectors: NDArray[np.float32], rng: np.random.Generator, sample: int = 2000, reference: int = 50_000
) -> NDArray[np.float32]:
    """Each sampled image's score with its nearest other image."""
    n = len(vectors)
    queries = rng.choice(n, size=min(sample, n), replace=False)
    pool = np.sort(rng.choice(n, size=min(reference, n), replace=False))
    nearest = np.full(len(queries), -1.0, dtype=np.float32)
    for start in range(0, len(queries), 256):
        rows = queries[start : start + 256]
        scores = vectors[rows] @ vectors[pool].T
        scores[rows[:, None] == pool[None, :]] = -1.0  # not itself
        nearest[start : start + 256] = scores.max(axis=1)
    return nearest


def unrelated_band(
    vectors: NDArray[np.float32], rng: np.random.Generator, pairs: int = 200_000
) -> tuple[float, float]:
    """(floor, ceiling) from the scores of random distinct pairs: median + k * MAD."""
    n = len(vectors)
    first = rng.integers(0, n, size=pairs)
    second = rng.integers(0, n - 1, size=pairs)
    second = second + (second >= first)  # never the same image
    # In chunks: gathering every pair's vectors at once would hold 2 x pairs x dim floats.
    chunk = 20_000
    scores = np.concatenate(
        [
            np.einsum(
                "ij,ij->i", vectors[first[start : start + chunk]], vectors[second[start : start + chunk]]
            )
            for start in range(0, pairs, chunk)
        ]
    )
    median = float(np.median(scores))
    spread = _MAD_TO_SIGMA * float(np.median(np.abs(scores - median)))
    return median + FLOOR_MADS * spread, median + CEILING_MADS * spread
