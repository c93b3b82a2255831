"""The encoder as an MLflow pyfunc model: image bytes in, L2-normalised vectors out.

A registered version holds the ONNX file, `encoder.json` (the `EncoderInfo` and how to rebuild
the preprocessing) and, for Hugging Face models, the saved image processor. Loading it gives the
same `OnnxEncoder` the index was built with, so `imagefinder serve --model models:/...` serves
exactly that model. Only MLflow-related code imports this module (it imports mlflow).
"""

from __future__ import annotations

import json
import shutil
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
from numpy.typing import NDArray

from imagefinder.encoders.base import EncoderInfo
from imagefinder.encoders.onnx_runtime import OnnxEncoder
from imagefinder.encoders.preprocess import resize_crop_normalise
from imagefinder.errors import ModelUnavailableError
from imagefinder.images import ImageLimits, decode_image

# The file MLflow runs to build the model when it loads a version ("models from code").
ENTRY_POINT = Path(__file__).with_name("pyfunc_entry.py")
_PACKAGE = Path(__file__).resolve().parents[1]

# What a registered version needs beside its own code, pinned to what built the index: a clean
# environment that installs these loads it and gets the same vectors.
_REQUIREMENTS = ("mlflow-skinny", "onnxruntime", "numpy", "pillow", "pandas")
_HF_REQUIREMENTS = ("transformers",)


def model_code(folder: Path) -> Path:
    """Copy ImageFinder's own code into `folder` for MLflow's `code_paths`: a registered
    version loads without ImageFinder installed (MLflow puts the copy on `sys.path`)."""
    target = folder / _PACKAGE.name
    shutil.copytree(_PACKAGE, target, ignore=shutil.ignore_patterns("__pycache__", "static", "*.pyc"))
    return target


def model_requirements(spec: dict[str, Any]) -> list[str]:
    """The pip requirements of a registered version (not `imagefinder`, which it carries)."""
    names = _REQUIREMENTS + (_HF_REQUIREMENTS if spec.get("kind") == "hf" else ())
    return [f"{name}=={version(name)}" for name in names]


def model_files(encoder: Any, folder: Path) -> dict[str, str]:
    """Write what a registered version needs into `folder`; the MLflow artifacts mapping.
    Raises ModelUnavailableError for encoders that cannot be registered (no ONNX file)."""
    spec = getattr(encoder, "spec", None)
    model_path = getattr(encoder, "model_path", None)
    if spec is None or model_path is None:
        raise ModelUnavailableError(
            f"{encoder.info.name} runs without an ONNX file (e.g. on a GPU), so it cannot be "
            "registered in MLflow; the index run is still recorded"
        )
    info = encoder.info
    description = {
        "info": {
            "name": info.name,
            "version": info.version,
            "dim": info.dim,
            "preprocessing": info.preprocessing,
        },
        "spec": spec,
    }
    (folder / "encoder.json").write_text(json.dumps(description, indent=1))
    artifacts = {"onnx": str(model_path), "encoder": str(folder / "encoder.json")}
    if spec.get("kind") == "hf":
        encoder.processor.save_pretrained(folder / "processor")
        artifacts["processor"] = str(folder / "processor")
    return artifacts


def make_paths_relative(model_dir: Path) -> None:
    """MLflow records where a saved model's files came from (the build machine's absolute paths)
    beside where they are inside the model; loading reads only the latter, so keep only that."""
    from mlflow.models import Model

    model = Model.load(str(model_dir))
    flavor = model.flavors["python_function"]
    if "model_code_path" in flavor:
        flavor["model_code_path"] = Path(flavor["model_code_path"]).name
    for artifact in flavor.get("artifacts", {}).values():
        artifact["uri"] = artifact["path"]
    model.save(str(model_dir / "MLmodel"))


def encoder_from_files(onnx: Path, description: Path, processor: Path | None) -> OnnxEncoder:
    """Rebuild the encoder from a registered version's files."""
    saved = json.loads(description.read_text())
    info = EncoderInfo(**saved["info"])
    spec = dict(saved["spec"])
    kind = spec.pop("kind")
    min_short_side = int(spec.pop("min_short_side"))
    if kind == "resize_crop_normalise":
        # Versions registered before `crop_only` existed resized the whole image, then cropped:
        # served the same way, so a registered version keeps giving the vectors of its index.
        spec.setdefault("crop_only", False)
        preprocess: Any = partial(resize_crop_normalise, **spec)
    elif kind == "hf" and processor is not None:
        from transformers import AutoImageProcessor

        from imagefinder.encoders.huggingface import processor_preprocess

        preprocess = processor_preprocess(AutoImageProcessor.from_pretrained(processor))
    else:
        raise ModelUnavailableError(f"a registered encoder of unknown kind {kind!r}")
    encoder = OnnxEncoder(onnx, info, preprocess, min_short_side)
    encoder.spec = {"kind": kind, "min_short_side": min_short_side, **spec}
    return encoder


class EncoderModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """pyfunc: `predict([image bytes, ...])` -> one vector (list of floats) per image, as the index
    stores them."""

    encoder: OnnxEncoder

    def load_context(self, context: Any) -> None:
        artifacts = context.artifacts
        processor = artifacts.get("processor")
        self.encoder = encoder_from_files(
            Path(artifacts["onnx"]), Path(artifacts["encoder"]), Path(processor) if processor else None
        )

    def predict(
        self, context: Any, model_input: list[bytes], params: dict[str, Any] | None = None
    ) -> list[list[float]]:
        limits = ImageLimits()
        batch = np.stack(
            [
                self.encoder.preprocess(
                    decode_image(data, limits, f"<input {n}>", self.encoder.min_short_side)
                )
                for n, data in enumerate(model_input)
            ]
        )
        vectors: NDArray[np.float32] = self.encoder.embed_arrays(batch)
        return vectors.tolist()  # type: ignore[no-any-return]
