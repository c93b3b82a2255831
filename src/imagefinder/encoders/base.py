"""The encoder contract: images in, L2-normalised float32 vectors out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image


@dataclass(frozen=True)
class EncoderInfo:
    """What an index records about the encoder that built it. A different name, version or dim
    produces incomparable vectors, so the store refuses to mix them."""

    name: str
    version: str
    dim: int
    preprocessing: str


class RegisteredVersion(Protocol):
    """The MLflow model version an encoder was loaded from (`tracking.ModelRecord`)."""

    @property
    def uri(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def sha256(self) -> str: ...


class Encoder(Protocol):
    info: EncoderInfo
    # Short side (pixels) the preprocessing needs; the decoder may decode JPEGs no smaller than this.
    min_short_side: int
    # The registered version it was loaded from; None when it was not loaded from the registry.
    registered: RegisteredVersion | None
    # texts -> (n, dim) vectors in the image space, for CLIP-family models; None for the others.
    embed_texts: Callable[[Sequence[str]], NDArray[np.float32]] | None

    def preprocess(self, image: Image.Image) -> NDArray[np.float32]:
        """One RGB image -> the model's input array for it. Pure and thread-safe."""
        ...

    def embed_arrays(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        """A stacked batch of preprocessed inputs -> (n, dim) L2-normalised vectors."""
        ...


def embed_images(encoder: Encoder, images: Sequence[Image.Image]) -> NDArray[np.float32]:
    """Convenience: preprocess and embed a few images in one call, the encoder's own way when it
    has one (OnnxEncoder spreads the preprocessing over its lanes)."""
    own = getattr(encoder, "embed_images", None)
    if own is not None:
        return own(images)  # type: ignore[no-any-return]
    if not images:
        return np.zeros((0, encoder.info.dim), dtype=np.float32)
    return encoder.embed_arrays(np.stack([encoder.preprocess(image) for image in images]))


def l2_normalise(vectors: NDArray[np.float32]) -> NDArray[np.float32]:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
