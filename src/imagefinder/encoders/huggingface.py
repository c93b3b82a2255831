"""Any Hugging Face transformers vision encoder, selected as `hf:<hub id or local folder>`.

Families and the vector each gives (L2-normalised):
- CLIP / SigLIP: `get_image_features` (the projected image embedding, in the space of the text
  embeddings, so text search works: `embed_texts`).
- DINOv2: the CLS token concatenated with the mean of the patch tokens (as the DINOv2 authors
  evaluate retrieval), 2 x hidden size.
- ViT and other image backbones: the CLS token, or the mean of the tokens (`pooling="mean"`).

Preprocessing is the model's own `AutoImageProcessor`. The image tower is exported once to ONNX
(cached under the model cache, keyed by model, weights and pooling) and checked against torch;
a model that does not export runs in torch. With a GPU (`device="auto"` or "cuda") torch runs there.
Hub ids resolve through the normal Hugging Face cache; where the Hub cannot be reached the load
fails with a short message, at once when HF_HUB_OFFLINE=1. Only this module imports transformers.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from imagefinder.encoders.base import EncoderInfo, RegisteredVersion, l2_normalise
from imagefinder.errors import ModelUnavailableError

PREFIX = "hf:"
TEXT_FAMILIES = ("clip", "siglip", "siglip2")
PARITY_TOLERANCE = 1e-4


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_hf_encoder(ref: str, cache_dir: Path, pooling: str = "auto", device: str = "auto") -> Any:
    """Load `ref` (a Hub id or a folder written by `save_pretrained`) as an Encoder."""
    try:
        import torch
        from transformers import AutoConfig, AutoImageProcessor, AutoModel
    except ImportError:
        raise ModelUnavailableError(
            "Hugging Face models need transformers and torch: pip install 'imagefinder[huggingface]'"
        ) from None

    _quiet_transformers()
    # huggingface_hub reads HF_HUB_OFFLINE once, when first imported; honour it as it is now, so
    # that an offline failure is immediate whatever imported the library first.
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        config = AutoConfig.from_pretrained(ref, local_files_only=offline)
        processor = AutoImageProcessor.from_pretrained(ref, local_files_only=offline)
        model = AutoModel.from_pretrained(ref, local_files_only=offline).eval()
    except (OSError, ValueError) as exc:
        hint = (
            "HF_HUB_OFFLINE is set, so only the local Hugging Face cache is used"
            if offline
            else "it is not in the local Hugging Face cache and the Hub could not be reached"
        )
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelUnavailableError(f"cannot load the model {ref!r}: {hint} ({first_line})") from None
    family = str(config.model_type)
    if pooling == "auto":
        pooling = "projection" if family in TEXT_FAMILIES else "cls+mean" if family == "dinov2" else "cls"
    tower = ImageTower(model, family, pooling).eval()
    size = _input_size(processor)
    with torch.no_grad():
        dim = int(tower(torch.zeros(1, 3, size, size)).shape[1])
    weights_id = _weights_id(ref, config)
    info = EncoderInfo(
        name=PREFIX + ref,
        version=f"{weights_id[:12]}-{pooling}",
        dim=dim,
        preprocessing=f"{type(processor).__name__} of {ref} ({size} px); {family} {pooling}; L2",
    )

    preprocess = processor_preprocess(processor)

    text = _text_embedder(ref, model, family)
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if not use_cuda:
        onnx_path = _export(tower, cache_dir, info, size)
        if onnx_path is not None:
            from imagefinder.encoders.onnx_runtime import OnnxEncoder

            encoder: Any = OnnxEncoder(onnx_path, info, preprocess, min_short_side=size)
            # What an MLflow registration needs to rebuild it: the processor, saved beside.
            encoder.spec = {"kind": "hf", "min_short_side": size}
            encoder.processor = processor
            encoder.runtime = "onnx"
            encoder.embed_texts = text
            encoder.torch_reference = tower
            return encoder
    return TorchEncoder(tower, info, preprocess, size, "cuda" if use_cuda else "cpu", text)


def processor_preprocess(processor: Any) -> Any:
    """Image -> pixel values, as the model's own Hugging Face image processor prepares them."""

    def preprocess(image: Image.Image) -> NDArray[np.float32]:
        pixels = processor(images=[image], return_tensors="np")["pixel_values"][0]
        return np.ascontiguousarray(pixels, dtype=np.float32)

    return preprocess


class TorchEncoder:
    """Runs the image tower in torch (a GPU when asked), for models that do not export to ONNX."""

    runtime = "torch"

    registered: RegisteredVersion | None = None  # loaded from a folder or the Hub, never the registry

    def __init__(
        self, tower: Any, info: EncoderInfo, preprocess: Any, size: int, device: str, text: Any
    ) -> None:
        self._tower = tower.to(device)
        self._device = device
        self._preprocess = preprocess
        self._lock = threading.Lock()
        self.info = info
        self.min_short_side = size
        self.embed_texts = text
        self.torch_reference = tower

    def preprocess(self, image: Image.Image) -> NDArray[np.float32]:
        return self._preprocess(image)  # type: ignore[no-any-return]

    def embed_arrays(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        import torch

        with self._lock, torch.no_grad():
            vectors = self._tower(torch.from_numpy(batch).to(self._device)).float().cpu().numpy()
        return l2_normalise(vectors)


def _image_tower_class() -> Any:
    import torch
    import torch.nn.functional as F  # noqa: N812

    class _ImageTower(torch.nn.Module):
        """pixel_values -> L2-normalised image embedding, for every supported family."""

        def __init__(self, model: Any, family: str, pooling: str) -> None:
            super().__init__()
            self.model = model
            self.family = family
            self.pooling = pooling

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            if self.pooling == "projection":
                output = self.model.get_image_features(pixel_values=pixel_values)
                # transformers v5 returns an output object whose pooler_output is the projection.
                features = output if isinstance(output, torch.Tensor) else output.pooler_output
            else:
                hidden = self.model(pixel_values=pixel_values).last_hidden_state
                if self.pooling == "cls":
                    features = hidden[:, 0]
                elif self.pooling == "mean":
                    features = hidden.mean(dim=1)
                elif self.pooling == "cls+mean":
                    features = torch.cat([hidden[:, 0], hidden[:, 1:].mean(dim=1)], dim=1)
                else:
                    raise ModelUnavailableError(f"unknown pooling {self.pooling!r}")
            return F.normalize(features, dim=1)

    return _ImageTower


def ImageTower(model: Any, family: str, pooling: str) -> Any:  # noqa: N802 - a class factory
    if pooling == "projection" and not hasattr(model, "get_image_features"):
        raise ModelUnavailableError(f"a {family} model has no projected image features")
    return _image_tower_class()(model, family, pooling)


def _text_embedder(ref: str, model: Any, family: str) -> Any:
    """`embed_texts(texts) -> (n, dim)` for CLIP-family models with a tokenizer; else None."""
    if family not in TEXT_FAMILIES or not hasattr(model, "get_text_features"):
        return None
    try:
        from transformers import AutoTokenizer

        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        tokenizer = AutoTokenizer.from_pretrained(ref, local_files_only=offline)
    except (OSError, ValueError):
        return None
    lock = threading.Lock()

    def embed_texts(texts: Sequence[str]) -> NDArray[np.float32]:
        import torch

        tokens = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        with lock, torch.no_grad():
            output = model.get_text_features(**tokens)
        features = output if isinstance(output, torch.Tensor) else output.pooler_output
        return l2_normalise(features.float().numpy())

    return embed_texts


def _export(tower: Any, cache_dir: Path, info: EncoderInfo, size: int) -> Path | None:
    """The cached ONNX file of the image tower, exported once; None when it does not export or
    does not match torch (then torch runs the model)."""
    import torch

    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", info.name[len(PREFIX) :])[-60:]
    target = cache_dir / f"hf-{slug}-{info.version}.onnx"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    probe = torch.rand(2, 3, size, size) * 2 - 1
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = tower(probe).numpy()  # before exporting (see efficientnet_lite.export_onnx)
            torch.onnx.export(
                tower,
                (torch.zeros(1, 3, size, size),),
                str(partial),
                dynamo=False,
                input_names=["pixels"],
                output_names=["embedding"],
                dynamic_axes={"pixels": {0: "batch"}, "embedding": {0: "batch"}},
                opset_version=17,
            )
        import onnxruntime as ort

        session = ort.InferenceSession(str(partial), providers=["CPUExecutionProvider"])
        (actual,) = session.run(None, {"pixels": probe.numpy()})
        if float(np.abs(actual - expected).max()) > PARITY_TOLERANCE:
            return None
        os.replace(partial, target)
        return target
    except Exception:  # noqa: BLE001 - any exporter failure means: run in torch instead
        return None
    finally:
        partial.unlink(missing_ok=True)


def _input_size(processor: Any) -> int:
    """The side of the square the processor produces (its crop when it crops, else its size)."""
    attributes = ("crop_size", "size") if getattr(processor, "do_center_crop", False) else ("size",)
    for attribute in attributes:
        size = getattr(processor, attribute, None)
        if isinstance(size, int):
            return size
        # A dict in transformers 4, a SizeDict object in 5.
        for key in ("height", "shortest_edge"):
            value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
            if value:
                return int(value)
    return 224


def _weights_id(ref: str, config: Any) -> str:
    """Identifies the exact weights: the Hub commit when known, else a hash of the weight files."""
    commit = getattr(config, "_commit_hash", None)
    if commit:
        return str(commit)
    digest = hashlib.sha256()
    folder = Path(ref)
    for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
