"""A fine-tuned network -> the ONNX file a registered encoder version serves.

The network is exported in fp32 and checked against torch (as the default's export is); when the
base encoder is int8, the export is quantised the same way as the default (static, QDQ,
per-channel, calibrated on the same fixed photos), so its query cost is the default's, and the
int8 file is checked against the fp32 one on those photos.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imagefinder.encoders.base import EncoderInfo
from imagefinder.encoders.efficientnet_lite import PooledEmbedder, export_embedder
from imagefinder.encoders.lite0 import (
    CROP,
    LITE0_INFO,
    LITE0_INT8_INFO,
    PREPROCESS,
    SHORT_SIDE,
    calibration_pixels,
)
from imagefinder.encoders.onnx_runtime import OnnxEncoder
from imagefinder.encoders.preprocess import resize_crop_normalise
from imagefinder.errors import ImageFinderError

# The int8 file must give nearly the fp32 network's vectors on the calibration photos (the
# default's own int8 file: mean cosine 0.985, lowest 0.942, on the same photos).
MIN_INT8_MEAN_COSINE = 0.97


class ExportError(ImageFinderError):
    """The exported model does not reproduce the trained network."""


@dataclass(frozen=True)
class ExportedModel:
    path: Path
    info: EncoderInfo
    parity: dict[str, float]


def export_finetuned(model: PooledEmbedder, folder: Path, base: EncoderInfo) -> ExportedModel:
    """Write the fine-tuned encoder's ONNX file into `folder`. Its version names the trained
    weights (the SHA-256 of the fp32 export), so two different trainings never share a version
    and an index can never mix their vectors."""
    from functools import partial

    folder.mkdir(parents=True, exist_ok=True)
    fp32 = folder / "encoder-fp32.onnx"
    parity = {"fp32_max_abs_diff": export_embedder(model, fp32, CROP)}
    tag = hashlib.sha256(fp32.read_bytes()).hexdigest()[:12]
    root = base.version.split("+ft-")[0]  # a fine-tuned base was trained from the same weights
    int8 = "int8" in root
    info = EncoderInfo(
        name=base.name,
        version=f"{root}+ft-{tag}",
        dim=base.dim,
        preprocessing=(LITE0_INT8_INFO if int8 else LITE0_INFO).preprocessing
        + f"; fine-tuned on the collection (weights {tag})",
    )
    if not int8:
        return ExportedModel(fp32, info, parity)
    from imagefinder.encoders.quantise import quantise_static

    pixels = calibration_pixels()
    path = folder / "encoder-int8.onnx"
    quantise_static(fp32, path, "pixels", pixels)
    batch = np.stack(pixels)
    preprocess = partial(resize_crop_normalise, **PREPROCESS)
    full = OnnxEncoder(fp32, info, preprocess, SHORT_SIDE, lanes=1).embed_arrays(batch)  # type: ignore[arg-type]
    quantised = OnnxEncoder(path, info, preprocess, SHORT_SIDE, lanes=1).embed_arrays(batch)  # type: ignore[arg-type]
    cosines = np.sum(full * quantised, axis=1)
    parity["int8_mean_cosine"] = float(cosines.mean())
    parity["int8_min_cosine"] = float(cosines.min())
    if cosines.mean() < MIN_INT8_MEAN_COSINE:
        raise ExportError(
            f"the int8 model differs from the fp32 one: mean cosine {cosines.mean():.4f} on the "
            f"calibration photos, under {MIN_INT8_MEAN_COSINE}"
        )
    return ExportedModel(path, info, parity)
