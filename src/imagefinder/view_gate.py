"""Whether a query's second pass is worth its cost: a gate learned on the collection's own images.

The extra views of `imagefinder.views` (turned, four corners, centre) find copies that are only a
part of the query or turned: a photo pasted into a larger picture, framed by a screenshot, turned
by 90 degrees. They cost 7 more encoder runs, and they used to run for every query that found no
copy, which is every query whose copy is not in the collection: the common case of a search
service, paying eight times the encoder for nothing.

The gate looks at the plain query's vector, which the first pass computed anyway, and asks
whether the query looks like such a picture. It is a logistic regression over encoder vectors,
fitted on the collection's own images (`fit_view_gate`): positives are images pasted small into
another collection image or a synthetic background, framed as screenshots, or turned a quarter;
negatives are the images themselves and milder edits (crops, mirror, colour, small rotations,
text, low resolution, JPEG). So it is learned for the encoder and the kind of pictures it serves,
as the whitening is, with ImageFinder's own edits (`imagefinder.training.augment`), never with a
benchmark's. The second pass runs when the first finds no copy *and* the gate's probability is
at least its threshold (below); an index without a gate (fewer images than `MIN_IMAGES` could be read, a
collection imported from Parquet) runs it whenever no copy is found, as before.

The threshold is set by what the second pass may cost, not picked by hand. Its 7 extra views cost
up to 7 more passes of a heavy encoder (a ViT gains little from batching them), and a query whose
copy is not in the index should cost at most 1.5 times a single pass on average: so at most
PLAIN_SHARE (1/14) of plain photos may take the second pass. The fit estimates that share on the
collection's own photos, each scored by a gate fitted without it (FOLDS-fold, by image), and takes
the lowest threshold that keeps it. A gate whose held-out plain photos cannot be kept under the
share at any threshold (an encoder whose vectors do not tell a pasted picture from a plain one,
such as a model with random weights) is kept switched off: `adaptive` then runs no second pass
for that encoder, and `thorough` still does. `make bench-second-pass` measures what the gate keeps
and saves.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from imagefinder.encoders.base import EncoderInfo
from imagefinder.training.augment import composite_view, plain_view

# At most this share of plain photos takes the second pass: 1 + 7 * share <= 1.5 (see above).
PLAIN_SHARE = 1 / 14
FOLDS = 5
# The threshold of a gate kept switched off: probabilities never reach it.
OFF = 2.0
# Images the gate is fitted on (each gives three composite and three plain views), and the fewest
# it is fitted on at all.
SAMPLE = 200
MIN_IMAGES = 20
EMBED_BATCH = 32
REGULARISATION = 0.1
STEPS = 500
LEARNING_RATE = 0.5

Embed = Callable[[Sequence[Image.Image]], NDArray[np.float32]]


@dataclass(frozen=True, eq=False)
class ViewGate:
    weights: NDArray[np.float32]  # over encoder vectors, standardisation folded in
    bias: float
    threshold: float
    fitted_on: int  # images its views were made from
    encoder: str  # `encoder_key` of the encoder whose vectors it reads
    # Share of held-out plain photos at or above `threshold`; None for a gate fitted before it was measured.
    plain_share: float | None = None

    @property
    def is_off(self) -> bool:
        return self.threshold > 1.0

    def probability(self, vector: NDArray[np.float32]) -> float:
        logit = float(np.dot(np.asarray(vector, dtype=np.float32), self.weights)) + self.bias
        return float(_sigmoid(np.float64(logit)))

    def wants_views(self, vector: NDArray[np.float32]) -> bool:
        return self.probability(vector) >= self.threshold

    def describe(self) -> dict[str, Any]:
        """What `imagefinder info` and /health show: a gate switched off has no threshold."""
        return {
            "fitted_on": self.fitted_on,
            "threshold": None if self.is_off else round(self.threshold, 4),
            "held_out_plain_share": None if self.plain_share is None else round(self.plain_share, 4),
        }

    def to_dict(self) -> dict[str, Any]:
        weights = np.asarray(self.weights, dtype="<f4").tobytes()
        return {
            "weights": base64.b64encode(weights).decode("ascii"),
            "bias": self.bias,
            "threshold": self.threshold,
            "fitted_on": self.fitted_on,
            "encoder": self.encoder,
            "plain_share": self.plain_share,
        }

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> ViewGate:
        weights = np.frombuffer(base64.b64decode(fields["weights"]), dtype="<f4").astype(np.float32)
        return cls(
            weights,
            float(fields["bias"]),
            float(fields["threshold"]),
            int(fields["fitted_on"]),
            str(fields["encoder"]),
            None if fields.get("plain_share") is None else float(fields["plain_share"]),
        )


def encoder_key(info: EncoderInfo) -> str:
    """Which encoder's vectors a gate reads: another encoder or version needs a gate of its own."""
    return f"{info.name}:{info.version}:{info.dim}"


def fit_view_gate(images: Sequence[Image.Image], embed: Embed, encoder: str, seed: int = 0) -> ViewGate:
    """A gate for `embed`'s vectors from views of `images` (RGB, working size: `augment.work_image`),
    its threshold set by `PLAIN_SHARE` on held-out plain photos."""
    views = gate_views(images, seed)
    # In batches: a large model given hundreds of images in one call can run out of memory.
    pictures = views.images
    vectors = np.concatenate(
        [embed(pictures[i : i + EMBED_BATCH]) for i in range(0, len(pictures), EMBED_BATCH)]
    )
    held_out = held_out_probabilities(vectors, views, seed)
    threshold, share = budget_threshold(held_out[views.unedited])
    weights, bias = logistic_regression(vectors, views.labels)
    return ViewGate(weights, bias, threshold, len(images), encoder, share)


@dataclass(frozen=True)
class GateViews:
    images: list[Image.Image]
    labels: NDArray[np.float32]  # 1: composite, 0: plain
    source: NDArray[np.int64]  # which of the fitted images each view was made from
    unedited: NDArray[np.bool_]  # the fitted image itself: a plain photo as a query would be


def gate_views(images: Sequence[Image.Image], seed: int = 0) -> GateViews:
    """What a gate learns from: three composite views of each image (label 1: pasted into another
    image or a background, framed as a screenshot, turned) and three plain ones (label 0: the
    image itself and two milder edits)."""
    rng = random.Random(seed)
    composite: list[Image.Image] = []
    plain: list[Image.Image] = []
    for n, image in enumerate(images):
        others = [*images[:n], *images[n + 1 :]]
        composite.extend(composite_view(image, rng, others, kind) for kind in ("paste", "screenshot", "turn"))
        plain.extend([image, plain_view(image, rng), plain_view(image, rng)])
    count = len(images)
    labels = np.concatenate([np.ones(3 * count), np.zeros(3 * count)]).astype(np.float32)
    source = np.tile(np.repeat(np.arange(count), 3), 2)
    unedited = np.concatenate([np.zeros(3 * count, bool), np.tile([True, False, False], count)])
    return GateViews([*composite, *plain], labels, source, unedited)


def held_out_probabilities(
    vectors: NDArray[np.float32], views: GateViews, seed: int = 0
) -> NDArray[np.float64]:
    """Each view's probability under a gate fitted without any view of its image (FOLDS folds)."""
    count = int(views.source.max()) + 1
    fold_of_image = np.random.default_rng(seed).permutation(count) % FOLDS
    fold = fold_of_image[views.source]
    out = np.zeros(len(vectors))
    for k in range(FOLDS):
        held = fold == k
        if not held.any():
            continue
        weights, bias = logistic_regression(vectors[~held], views.labels[~held])
        out[held] = _sigmoid(vectors[held].astype(np.float64) @ weights + bias)
    return out


def budget_threshold(plain: NDArray[np.float64], share: float = PLAIN_SHARE) -> tuple[float, float]:
    """(the lowest threshold that at most `share` of `plain` reach, the share that does); (OFF, the
    share at probability 1) when more than `share` of them are certain."""
    ordered = np.sort(np.asarray(plain, dtype=np.float64))[::-1]
    allowed = int(np.floor(share * len(ordered)))  # how many plain photos may reach it
    # Just above the first probability that must stay below it, so ties stay below together.
    threshold = float(np.nextafter(ordered[allowed], np.inf))
    if threshold > 1.0:
        return OFF, float((ordered >= 1.0).mean())
    return threshold, float((ordered >= threshold).mean())


def _sigmoid(logit: NDArray[np.float64]) -> NDArray[np.float64]:
    return 1.0 / (1.0 + np.exp(-np.clip(logit, -60.0, 60.0)))


def logistic_regression(
    x: NDArray[np.float32],
    y: NDArray[np.float32],
    regularisation: float = REGULARISATION,
    steps: int = STEPS,
    learning_rate: float = LEARNING_RATE,
) -> tuple[NDArray[np.float32], float]:
    """(weights, bias) of an L2-regularised logistic regression of `y` (0/1) on `x`, by gradient
    descent on standardised features; the standardisation is folded into the weights returned."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-6
    z = (x - mean) / scale
    w = np.zeros(z.shape[1])
    b = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(z @ w + b)))
        error = p - y
        w -= learning_rate * (z.T @ error / len(y) + regularisation * w)
        b -= learning_rate * float(error.mean())
    folded = w / scale
    return folded.astype(np.float32), float(b - folded @ mean)
