"""One fine-tuning session on loaded images: split, validate, train, export, and the encoder
that serves the result. Imports torch (the `finetune` use case imports this module only when it
trains)."""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imagefinder.encoders.base import EncoderInfo
from imagefinder.encoders.efficientnet_lite import PooledEmbedder, load_pretrained_lite0
from imagefinder.encoders.lite0 import lite0_onnx_encoder, lite0_weights_path
from imagefinder.encoders.onnx_runtime import OnnxEncoder
from imagefinder.training.data import LoadedImages
from imagefinder.training.export import ExportedModel, export_finetuned
from imagefinder.training.trainer import Trainer, TrainingImage, TrainingResult, TrainSettings
from imagefinder.training.validation import (
    CombinedValidation,
    CopyValidation,
    LabelValidation,
    Validation,
    split,
)

# Held out of supervised training, per label (at least one image of each label with two or more).
VALIDATION_FRACTION = 0.2
# Self-supervised validation searches edited views of at most this many collection images.
COPY_VALIDATION_IMAGES = 400


@dataclass
class Trained:
    result: TrainingResult
    exported: ExportedModel
    encoder: OnnxEncoder
    train_images: int
    validation_images: int


def train_and_export(
    data: LoadedImages, options: Any, base: EncoderInfo, work_dir: Path, progress: Any = None
) -> Trained:
    settings = TrainSettings(
        epochs=options.epochs,
        batch_size=options.batch_size,
        learning_rate=options.learning_rate,
        seed=options.seed,
        device=_device(options.device),
        patience=options.patience,
        supervised_loss=options.supervised_loss,
        train_from=options.train_from,
        min_images_per_epoch=options.min_images_per_epoch,
        collection_weight=options.collection_weight,
    )
    train_positions, validation, held = _validation(
        data,
        options.supervised,
        options.self_supervised,
        VALIDATION_FRACTION,
        COPY_VALIDATION_IMAGES,
        options.seed,
    )
    train = [TrainingImage(data.ids[p], data.images[p], data.labels[p]) for p in train_positions]
    model = PooledEmbedder(load_pretrained_lite0(lite0_weights_path()))
    trainer = Trainer(model, settings)
    with tempfile.TemporaryDirectory() as scratch:
        if settings.device == "cpu":
            from imagefinder.training.prefix import onnx_prefix

            trainer.use_prefix(
                onnx_prefix(trainer.suffix, settings.image_size, Path(scratch) / "prefix.onnx")
            )
        result = trainer.fit(train, validation, options.self_supervised, options.supervised, progress)
    model = result.model.cpu()
    exported = export_finetuned(model, work_dir / _run_folder(data.fingerprint(), options), base)
    encoder = lite0_onnx_encoder(exported.path, exported.info)
    return Trained(result, exported, encoder, len(train), held)


def _validation(
    data: LoadedImages, supervised: bool, self_supervised: bool, fraction: float, copy_images: int, seed: int
) -> tuple[list[int], Validation, int]:
    """(training positions, the validation, how many images it holds out of training)."""
    everything = list(range(len(data.ids)))
    copies = None
    if self_supervised:
        # Copy detection is learned for this collection's own images: validation searches
        # unseen edits (their own seed) of them among all of them.
        sample = sorted(random.Random(seed).sample(everything, min(copy_images, len(everything))))
        copies = CopyValidation(
            [data.images[p] for p in sample], data.images, sample, views_per_image=2, seed=seed
        )
    if not supervised:
        assert copies is not None
        return everything, copies, 0
    labelled = [p for p in everything if data.labels[p] is not None]
    train, held = split([data.ids[p] for p in labelled], [data.labels[p] for p in labelled], fraction, seed)
    held_positions = {labelled[p] for p in held}
    labels = LabelValidation(
        [data.images[labelled[p]] for p in held],
        [data.labels[labelled[p]] for p in held],  # type: ignore[misc]
        [data.images[labelled[p]] for p in train],
        [data.labels[labelled[p]] for p in train],  # type: ignore[misc]
    )
    kept = [p for p in everything if p not in held_positions]
    return kept, (CombinedValidation(copies, labels) if copies is not None else labels), len(held_positions)


def _run_folder(fingerprint: str, options: Any) -> str:
    """The working folder of one training's exports, named by its data and settings."""
    import hashlib

    return hashlib.sha256(f"{fingerprint}:{options!r}".encode()).hexdigest()[:12]


def _device(asked: str) -> str:
    if asked == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return asked
