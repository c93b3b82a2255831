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
at least `THRESHOLD`; an index without a gate (fewer images than `MIN_IMAGES` could be read, a
collection imported from Parquet) runs it whenever no copy is found, as before.

The threshold is high on purpose: the second pass rescues the pictures that look strongly
framed, pasted or turned, and those score high; a plain photo that merely resembles nothing in
the collection scores low. `make bench-second-pass` measures what the gate keeps and saves.
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

THRESHOLD = 0.8
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

    def probability(self, vector: NDArray[np.float32]) -> float:
        logit = float(np.dot(np.asarray(vector, dtype=np.float32), self.weights)) + self.bias
        return float(1.0 / (1.0 + np.exp(-np.clip(logit, -60.0, 60.0))))

    def wants_views(self, vector: NDArray[np.float32]) -> bool:
        return self.probability(vector) >= self.threshold

    def to_dict(self) -> dict[str, Any]:
        weights = np.asarray(self.weights, dtype="<f4").tobytes()
        return {
            "weights": base64.b64encode(weights).decode("ascii"),
            "bias": self.bias,
            "threshold": self.threshold,
            "fitted_on": self.fitted_on,
            "encoder": self.encoder,
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
        )


def encoder_key(info: EncoderInfo) -> str:
    """Which encoder's vectors a gate reads: another encoder or version needs a gate of its own."""
    return f"{info.name}:{info.version}:{info.dim}"


def fit_view_gate(images: Sequence[Image.Image], embed: Embed, encoder: str, seed: int = 0) -> ViewGate:
    """A gate for `embed`'s vectors from views of `images` (RGB, working size: `augment.work_image`)."""
    views, labels = gate_views(images, seed)
    # In batches: a large model given hundreds of images in one call can run out of memory.
    vectors = np.concatenate([embed(views[i : i + EMBED_BATCH]) for i in range(0, len(views), EMBED_BATCH)])
    weights, bias = logistic_regression(vectors, labels)
    return ViewGate(weights, bias, THRESHOLD, len(images), encoder)


def gate_views(images: Sequence[Image.Image], seed: int = 0) -> tuple[list[Image.Image], NDArray[np.float32]]:
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
    labels = np.concatenate([np.ones(len(composite)), np.zeros(len(plain))]).astype(np.float32)
    return [*composite, *plain], labels


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
