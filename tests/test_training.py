"""Fine-tuning's parts: the edits, the losses, the split, and a real training run on real photos
(the default encoder's ImageNet weights, a few dozen real photographs, CPU)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from PIL import Image

from imagefinder.encoders.efficientnet_lite import PooledEmbedder, load_pretrained_lite0
from imagefinder.encoders.lite0 import lite0_weights_path
from imagefinder.training import losses
from imagefinder.training.augment import RealWorldEdits, work_image
from imagefinder.training.trainer import Objective, Trainer, TrainingImage, TrainingResult, TrainSettings
from imagefinder.training.validation import CopyValidation, LabelValidation, average_precision, split


def load_images(folder: Path) -> list[Image.Image]:
    return [work_image(Image.open(path)) for path in sorted(folder.iterdir())]


def test_edits_are_images_and_repeatable(photos: Path) -> None:
    edits = RealWorldEdits()
    image = work_image(Image.open(photos / "chelsea.png"))
    others = [work_image(Image.open(photos / "coffee.png"))]
    views = [edits(image, random.Random(seed), others) for seed in range(60)]
    assert all(view.mode == "RGB" and min(view.size) >= 8 for view in views)
    assert len({view.tobytes() for view in views}) == 60  # every seed its own edit
    again = edits(image, random.Random(7), others)
    assert again.tobytes() == views[7].tobytes()


def test_info_nce_prefers_views_of_the_same_image() -> None:
    generator = torch.Generator().manual_seed(0)
    anchors = torch.nn.functional.normalize(torch.randn(8, 32, generator=generator), dim=1)
    instance = torch.arange(8).repeat(2)
    aligned = torch.cat([anchors, anchors])
    shuffled = torch.cat([anchors, anchors[torch.randperm(8, generator=generator)]])
    assert losses.info_nce(aligned, instance, 0.1) < losses.info_nce(shuffled, instance, 0.1)


def test_collection_contrast_picks_each_view_s_own_image_and_trains_only_the_views() -> None:
    generator = torch.Generator().manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(20, 32, generator=generator), dim=1)
    rows = torch.tensor([3, 3, 11, 11])
    near = torch.nn.functional.normalize(bank[rows] + 0.1 * torch.randn(4, 32, generator=generator), dim=1)
    wrong = near[[2, 3, 0, 1]]
    assert losses.collection_contrast(near, rows, bank, 0.05) < losses.collection_contrast(
        wrong, rows, bank, 0.05
    )
    views = near.clone().requires_grad_(True)
    held = bank.clone().requires_grad_(True)
    losses.collection_contrast(views, rows, held, 0.05).backward()
    assert views.grad is not None and float(views.grad.abs().sum()) > 0
    assert held.grad is None  # the bank is a fixed target, refreshed each epoch


def test_collection_contrast_does_not_push_away_images_of_the_same_label() -> None:
    """Training with labels and without: another image of the view's label is no negative."""
    bank = torch.eye(4)
    view = torch.nn.functional.normalize(torch.tensor([[1.0, 1.0, 0.0, 0.0]]), dim=1)
    rows = torch.tensor([0])
    unlabelled = losses.collection_contrast(view, rows, bank, 0.1)
    same_label = losses.collection_contrast(view, rows, bank, 0.1, torch.tensor([7, 7, -1, -1]))
    other_label = losses.collection_contrast(view, rows, bank, 0.1, torch.tensor([7, 8, -1, -1]))
    assert float(same_label) < float(unlabelled) == pytest.approx(float(other_label))
    assert float(same_label) == pytest.approx(
        float(losses.collection_contrast(view, rows, bank[[0, 2, 3]], 0.1))
    )


def test_koleo_rewards_spread() -> None:
    spread = torch.eye(8)
    bunched = torch.nn.functional.normalize(torch.ones(8, 8) + 0.01 * torch.eye(8), dim=1)
    assert losses.koleo(spread) < losses.koleo(bunched)


def test_supervised_contrastive_ignores_anchors_without_a_positive() -> None:
    embeddings = torch.eye(4)
    assert float(losses.supervised_contrastive(embeddings, torch.tensor([0, 1, 2, 3]), 0.1)) == 0.0


def test_both_kinds_of_training_data_combine() -> None:
    """Self-supervised with labels: every indexed image, labelled where a label is known; with
    a labelled folder: the indexed images and the folder's."""
    from imagefinder.training.data import LoadedImages, concatenate, merge_labels

    def loaded(ids: list[str], labels: list[int | None], names: list[str]) -> LoadedImages:
        result = LoadedImages(
            ids=ids,
            images=[Image.new("RGB", (8, 8))] * len(ids),
            labels=labels,
            label_names=names,
            skipped=[(f"gone-{ids[0]}", "unreadable")],
        )
        result.digest.update(",".join(ids).encode())
        return result

    everything = loaded(["a", "b", "c"], [None, None, None], [])
    labelled = loaded(["b", "c"], [1, 0], ["cat", "dog"])
    merged = merge_labels(everything, labelled)
    assert (merged.ids, merged.labels, merged.label_names) == (["a", "b", "c"], [None, 1, 0], ["cat", "dog"])
    assert len(merged.skipped) == 2
    both = concatenate(everything, labelled)
    assert (both.ids, both.labels) == (["a", "b", "c", "b", "c"], [None, None, None, 1, 0])
    assert both.fingerprint() == merged.fingerprint() != everything.fingerprint()


def test_average_precision() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    assert average_precision(scores, np.array([True, False, True, False])) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(scores, np.array([False] * 4)) == 0.0


def test_split_is_deterministic_and_stratified() -> None:
    ids = [f"img{i}" for i in range(30)]
    labels: list[int | None] = [i % 3 for i in range(30)]
    train, held = split(ids, labels, 0.2, seed=0)
    assert split(ids, labels, 0.2, seed=0) == (train, held)
    assert split(ids, labels, 0.2, seed=1) != (train, held)
    assert sorted(train + held) == list(range(30))
    assert sorted(labels[p] for p in held) == [0, 0, 1, 1, 2, 2]
    # A label with two images holds one out and keeps one; a label with one keeps it.
    train, held = split(["a", "b", "c"], [0, 0, 1], 0.2, seed=0)
    assert len(held) == 1 and held[0] in (0, 1) and 2 in train


def fixed_batch_loss(trainer: Trainer, images: list[Image.Image]) -> float:
    """The self-supervised loss, the collection term included, on the same edited views every
    time (their own seed)."""
    batch = [TrainingImage(f"photo{i}", image) for i, image in enumerate(images)]
    views = trainer._views(batch, random.Random(1234), images, two=True)
    objective = Objective(self_supervised=True, supervised=False, bank=trainer.bank(batch, supervised=False))
    with torch.no_grad():
        return float(trainer._loss(trainer._forward(views.pixels), views, objective))


def test_edited_views_do_not_depend_on_the_threads_that_make_them(photos: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    images = [work_image(Image.open(photos / name)) for name in ("chelsea.png", "coffee.png", "rocket.jpg")]
    batch = [TrainingImage(f"photo{i}", image) for i, image in enumerate(images)]
    trainer = Trainer(PooledEmbedder(load_pretrained_lite0(lite0_weights_path())), TrainSettings())
    alone = trainer._views(batch, random.Random(5), images, two=True)
    with ThreadPoolExecutor(3) as pool:
        threaded = trainer._views(batch, random.Random(5), images, two=True, pool=pool)
    assert alone.pixels.shape == (6, 3, 224, 224)
    assert np.array_equal(alone.pixels, threaded.pixels)
    assert alone.ids == threaded.ids == ["photo0", "photo0", "photo1", "photo1", "photo2", "photo2"]
    assert not np.array_equal(alone.pixels[0], alone.pixels[1])  # two different views of one image


def test_self_supervised_training_reduces_the_loss_and_beats_the_base(few_dozen_photos: Path) -> None:
    images = load_images(few_dozen_photos)
    assert len(images) == 37
    model = PooledEmbedder(load_pretrained_lite0(lite0_weights_path()))
    settings = TrainSettings(
        epochs=3, batch_size=16, min_images_per_epoch=96, train_from=12, patience=3, seed=0
    )
    trainer = Trainer(model, settings)
    loss_before = fixed_batch_loss(trainer, images)
    validation = CopyValidation(images, images, list(range(len(images))), views_per_image=2, seed=0)
    train = [TrainingImage(f"photo{i}", image) for i, image in enumerate(images)]
    result = trainer.fit(train, validation, self_supervised=True, supervised=False)
    assert len(result.history) == 3
    assert fixed_batch_loss(trainer, images) < loss_before
    assert result.after > result.before
    assert result.best_epoch >= 1


def test_an_epoch_embeds_the_collection_once_for_its_bank_and_the_validation(photos: Path) -> None:
    """The bank at the start of an epoch reuses the vectors that the validation before it made
    with the same weights; after a training step they are made again."""
    images = [
        work_image(Image.open(photos / n)) for n in ("chelsea.png", "coffee.png", "rocket.jpg", "brick.png")
    ]
    embedded: list[int] = []

    class Counting(Trainer):
        def _embed(self, batch: Sequence[Image.Image]) -> NDArray[np.float32]:
            embedded.append(len(batch))
            return super()._embed(batch)

    settings = TrainSettings(epochs=1, batch_size=4, min_images_per_epoch=4, train_from=14, seed=0)
    trainer = Counting(PooledEmbedder(load_pretrained_lite0(lite0_weights_path())), settings)
    validation = CopyValidation(images, images, list(range(4)), views_per_image=1, seed=0)
    train = [TrainingImage(f"photo{i}", image) for i, image in enumerate(images)]
    trainer.fit(train, validation, self_supervised=True, supervised=False)
    # before: 4 queries + 4 images; the bank: nothing new; after the step: 4 queries + 4 images.
    assert sum(embedded) == 16
    assert trainer._kept == {}


def test_supervised_training_beats_the_base_on_held_out_images(photos: Path) -> None:
    """Labels: which photo a quarter was cut from. Held-out quarters are searched among the
    training ones; mAP of finding the quarters of the same photo."""
    quarters, labels = [], []
    for label, name in enumerate(
        (
            "astronaut.png",
            "chelsea.png",
            "coffee.png",
            "rocket.jpg",
            "motorcycle_left.png",
            "brick.png",
            "grass.png",
            "retina.jpg",
        )
    ):
        with Image.open(photos / name) as opened:
            whole = opened.convert("RGB")
        w, h = whole.size
        for i in range(6):
            box = (i % 3 * w // 3, i // 3 * h // 2, (i % 3 + 1) * w // 3, (i // 3 + 1) * h // 2)
            quarters.append(work_image(whole.crop(box)))
            labels.append(label)
    ids = [f"q{i}" for i in range(len(quarters))]
    train_at, held_at = split(ids, labels, 0.34, seed=0)
    validation = LabelValidation(
        [quarters[p] for p in held_at],
        [labels[p] for p in held_at],
        [quarters[p] for p in train_at],
        [labels[p] for p in train_at],
    )
    model = PooledEmbedder(load_pretrained_lite0(lite0_weights_path()))
    settings = TrainSettings(epochs=3, batch_size=16, min_images_per_epoch=64, train_from=12, seed=0)
    train = [TrainingImage(ids[p], quarters[p], labels[p]) for p in train_at]
    result = Trainer(model, settings).fit(train, validation, self_supervised=False, supervised=True)
    assert result.after > result.before


class ScriptedValidation:
    """Validation scores read from a script, one per call (the base first, then each epoch)."""

    metric = "scripted"

    def __init__(self, scores: Sequence[float]) -> None:
        self.scores = list(scores)

    def score(self, embed: object) -> float:
        return self.scores.pop(0)


def scripted_fit(photos: Path, epochs: int, patience: int, scores: Sequence[float]) -> TrainingResult:
    """A short real training on three photos whose validation scores are `scores`."""
    images = [work_image(Image.open(photos / n)) for n in ("chelsea.png", "coffee.png", "rocket.jpg")]
    settings = TrainSettings(
        epochs=epochs, batch_size=3, min_images_per_epoch=3, train_from=15, patience=patience
    )
    trainer = Trainer(PooledEmbedder(load_pretrained_lite0(lite0_weights_path())), settings)
    train = [TrainingImage(f"photo{i}", image) for i, image in enumerate(images)]
    return trainer.fit(train, ScriptedValidation(scores), self_supervised=True, supervised=False)


def test_early_stopping_keeps_the_latest_of_tied_epochs_and_waits_again_after_a_tie(photos: Path) -> None:
    # base 0.5; epoch 1 beats it, epoch 2 ties epoch 1, then two epochs below: stop after epoch 4.
    result = scripted_fit(photos, 8, 2, [0.5, 0.6, 0.6, 0.55, 0.58, 0.9, 0.9, 0.9, 0.9])
    assert (result.best_epoch, len(result.history), result.after) == (2, 4, 0.6)
    assert result.stopped_early


def test_an_epoch_that_only_ties_the_base_is_not_kept(photos: Path) -> None:
    result = scripted_fit(photos, 3, 2, [0.5, 0.5, 0.5, 0.5])
    assert (result.best_epoch, len(result.history), result.after) == (0, 2, 0.5)


def test_early_stopping_waits_for_half_the_schedule(photos: Path) -> None:
    # Patience 1 alone would stop at epoch 2; half the schedule is 4 epochs, and epoch 4 is better.
    result = scripted_fit(photos, 8, 1, [0.5, 0.6, 0.55, 0.58, 0.7, 0.65, 0.6, 0.6, 0.6])
    assert (result.best_epoch, len(result.history), result.after) == (4, 5, 0.7)


def test_an_odd_schedule_is_not_stopped_before_its_half(photos: Path) -> None:
    result = scripted_fit(photos, 5, 1, [0.5, 0.6, 0.55, 0.56, 0.57, 0.58])
    assert (result.best_epoch, len(result.history)) == (1, 3)  # epoch 2 is before half of 5
