"""The training loop: fine-tune the default encoder's last stages on a collection's own images.

What is trained: the trunk's blocks from `train_from` on and its 1x1 head convolution, with the
batch-norm statistics frozen (batches of a few dozen images estimate them worse than ImageNet
did); the stem and the early blocks keep their ImageNet weights. The embedding is the encoder's
own (GeM, L2), so the result is the same architecture at the same query cost.

Losses (see `losses`): self-supervised copy detection (InfoNCE between two edited views of each
image, each view against the plain embeddings of the whole training collection, and KoLeo
spread), supervised (SupCon or a proxy softmax over the labels), or both summed.
Validation after every epoch, early stopping on it (not before half the epochs), the best
epoch's weights kept (the latest of tied ones).
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image

from imagefinder.encoders.efficientnet_lite import PooledEmbedder
from imagefinder.encoders.preprocess import resize_crop_normalise
from imagefinder.training import losses
from imagefinder.training.augment import RealWorldEdits
from imagefinder.training.stages import TrainedStages, embedding_dim, unfreeze_last_stages
from imagefinder.training.validation import Embed, Validation

SupervisedLoss = Literal["supcon", "proxy"]


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 12
    batch_size: int = 48
    learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    temperature: float = 0.05
    koleo_weight: float = 0.1
    # Weight of `losses.collection_contrast` in self-supervised training (0: batch negatives only).
    collection_weight: float = 1.0
    supervised_loss: SupervisedLoss = "supcon"
    # Index of the first trained block of the trunk's 16 (the rest stay as ImageNet made them).
    train_from: int = 10
    patience: int = 3
    # A small collection is cycled through until an epoch has seen at least this many images,
    # so an epoch is enough optimiser steps to be worth a validation.
    min_images_per_epoch: int = 512
    seed: int = 0
    device: str = "cpu"
    image_size: int = 224
    short_side: int = 256
    # Threads that make the edited views (Pillow and NumPy release the GIL in their work); None:
    # one per CPU, at most 8. Each view has its own seed, so the result does not depend on it.
    view_workers: int | None = None


@dataclass(frozen=True)
class TrainingImage:
    id: str
    image: Image.Image  # RGB, about `augment.WORK_SIDE` on its short side
    label: int | None = None


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    validation: float
    seconds: float
    images_per_s: float


@dataclass
class TrainingResult:
    model: PooledEmbedder
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    before: float = 0.0
    after: float = 0.0
    metric: str = ""
    stopped_early: bool = False


Progress = Callable[[EpochRecord | None, int, int], None]


@dataclass(frozen=True)
class Views:
    """One batch's edited views, preprocessed: `instance[i]` numbers the image view i was made
    from within the batch, `labels[i]` its label (a negative number unique to the image when it
    has none), `ids[i]` its id."""

    pixels: NDArray[np.float32]
    instance: torch.Tensor
    labels: torch.Tensor
    ids: list[str]


@dataclass(frozen=True)
class CollectionBank:
    """Plain embeddings of every training image under the model of the epoch's start: the
    negatives of `losses.collection_contrast`. `labels` (-1: none) when training with labels."""

    vectors: torch.Tensor
    row: dict[str, int]
    labels: torch.Tensor | None

    def rows(self, ids: Sequence[str]) -> torch.Tensor:
        return torch.tensor([self.row[i] for i in ids], device=self.vectors.device)


@dataclass(frozen=True)
class Objective:
    """What one epoch's loss is made of (see `Trainer._loss`)."""

    self_supervised: bool
    supervised: bool
    proxies: torch.Tensor | None = None
    bank: CollectionBank | None = None


# The frozen stages as a function of preprocessed pixels (n, 3, h, w) -> feature maps; on a CPU
# an ONNX Runtime session of them (see `prefix`) runs about 3x faster than eager torch.
FrozenPrefix = Callable[[NDArray[np.float32]], NDArray[np.float32]]


class Trainer:
    """Fine-tunes `model` (a PooledEmbedder over the Lite0 trunk) on `images`."""

    def __init__(
        self,
        model: PooledEmbedder,
        settings: TrainSettings,
        edits: RealWorldEdits | None = None,
        prefix: FrozenPrefix | None = None,
    ) -> None:
        self.model = model
        self.settings = settings
        self.edits = edits or RealWorldEdits()
        self.device = torch.device(settings.device)
        self.suffix = TrainedStages(model, settings.train_from)
        self._trainable = unfreeze_last_stages(model, settings.train_from)
        self._prefix = prefix
        # id(image) -> (image, its vector) under the current weights; emptied by each step.
        self._kept: dict[int, tuple[Image.Image, NDArray[np.float32]]] = {}

    def use_prefix(self, prefix: FrozenPrefix) -> None:
        """Run the frozen stages with `prefix` (see `training.prefix`) instead of torch."""
        self._prefix = prefix

    def fit(
        self,
        train: Sequence[TrainingImage],
        validation: Validation,
        self_supervised: bool,
        supervised: bool,
        progress: Progress | None = None,
    ) -> TrainingResult:
        s = self.settings
        _seed_everything(s.seed)
        model = self.model.to(self.device)
        trainable = list(self._trainable)
        n_labels = 1 + max((img.label for img in train if img.label is not None), default=-1)
        proxies = None
        if supervised and s.supervised_loss == "proxy":
            proxies = torch.nn.Parameter(
                torch.randn(n_labels, embedding_dim(model), device=self.device) * 0.01
            )
            trainable.append(proxies)
        optimiser = torch.optim.AdamW(trainable, lr=s.learning_rate, weight_decay=s.weight_decay)
        per_epoch = max(len(train), s.min_images_per_epoch)
        steps_per_epoch = max(1, math.ceil(per_epoch / s.batch_size))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=s.epochs * steps_per_epoch)

        rng = random.Random(s.seed)
        others = [img.image for img in train]
        collection = _unique(train)
        with (
            self._keeping_vectors(),
            ThreadPoolExecutor(_view_workers(s), thread_name_prefix="views") as pool,
        ):
            before = validation.score(self._embed_kept)
            result = TrainingResult(model, before=before, after=before, metric=validation.metric)
            best_state, best_score, waited = copy.deepcopy(model.state_dict()), before, 0
            for epoch in range(1, s.epochs + 1):
                started = time.perf_counter()
                bank = (
                    self.bank(collection, supervised, self._embed_kept)
                    if self_supervised and s.collection_weight > 0
                    else None
                )
                objective = Objective(self_supervised, supervised, proxies, bank)
                order: list[TrainingImage] = []
                while len(order) < per_epoch:
                    cycle = list(train)
                    rng.shuffle(cycle)
                    order.extend(cycle)
                order = order[:per_epoch]
                total, seen = self._epoch(order, rng, others, pool, optimiser, scheduler, objective, progress)
                score = validation.score(self._embed_kept)
                seconds = time.perf_counter() - started
                record = EpochRecord(epoch, total / max(1, seen), score, seconds, seen / max(seconds, 1e-9))
                result.history.append(record)
                if progress is not None:
                    progress(record, seen, len(order))
                if _keeps(score, best_score, result.best_epoch):
                    best_state, best_score, waited, result.best_epoch = (
                        copy.deepcopy(model.state_dict()),
                        score,
                        0,
                        epoch,
                    )
                else:
                    waited += 1
                    # Not before half the schedule: while the cosine learning rate is still
                    # high, the validation moves up and down before it climbs.
                    if waited >= s.patience and 2 * epoch >= s.epochs:
                        result.stopped_early = epoch < s.epochs
                        break
        model.load_state_dict(best_state)
        model.eval()
        result.after = best_score
        return result

    def _epoch(
        self,
        order: Sequence[TrainingImage],
        rng: random.Random,
        others: Sequence[Image.Image],
        pool: Executor,
        optimiser: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        objective: Objective,
        progress: Progress | None,
    ) -> tuple[float, int]:
        """One pass over `order` in batches: (summed loss times batch size, images seen)."""
        s, total, seen = self.settings, 0.0, 0
        for start in range(0, len(order), s.batch_size):
            batch = order[start : start + s.batch_size]
            if len(batch) < 2:
                continue  # a lone image has no negatives
            views = self._views(batch, rng, others, two=objective.self_supervised, pool=pool)
            loss = self._loss(self._forward(views.pixels), views, objective)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            scheduler.step()
            self._kept.clear()
            total += float(loss.detach()) * len(batch)
            seen += len(batch)
            if progress is not None:
                progress(None, seen, len(order))
        return total, seen

    def bank(
        self, collection: Sequence[TrainingImage], supervised: bool, embed: Embed | None = None
    ) -> CollectionBank:
        """The collection term's bank for `collection` (each image once) under the model as it is."""
        labels = None
        if supervised:
            labels = torch.tensor(
                [-1 if i.label is None else i.label for i in collection], device=self.device
            )
        return CollectionBank(
            torch.from_numpy((embed or self._embed)([img.image for img in collection])).to(self.device),
            {img.id: row for row, img in enumerate(collection)},
            labels,
        )

    def _views(
        self,
        batch: Sequence[TrainingImage],
        rng: random.Random,
        others: Sequence[Image.Image],
        two: bool,
        pool: Executor | None = None,
    ) -> Views:
        """Edited views of each image (two when self-supervised), preprocessed as at search time.
        Each view is drawn with its own seed from `rng`, in order, so `pool` changes only the speed."""
        jobs, instance, labels, ids = [], [], [], []
        # An image twice in a batch (a small collection cycled) is one instance.
        positions: dict[str, int] = {}
        for item in batch:
            position = positions.setdefault(item.id, len(positions))
            for _ in range(2 if two else 1):
                jobs.append((item.image, rng.getrandbits(64)))
                instance.append(position)
                labels.append(-1 - position if item.label is None else item.label)
                ids.append(item.id)

        def view(job: tuple[Image.Image, int]) -> NDArray[np.float32]:
            image, seed = job
            return self._pixels(self.edits(image, random.Random(seed), others))

        pixels = list(pool.map(view, jobs)) if pool is not None else [view(job) for job in jobs]
        return Views(np.stack(pixels), torch.tensor(instance), torch.tensor(labels), ids)

    def _loss(
        self,
        embeddings: torch.Tensor,
        views: Views,
        objective: Objective,
    ) -> torch.Tensor:
        """The batch's loss: InfoNCE, KoLeo and (with a bank) the collection term when
        self-supervised; SupCon or proxy softmax (with proxies) over the labelled views when
        supervised."""
        s, bank, proxies = self.settings, objective.bank, objective.proxies
        loss = embeddings.new_zeros(())
        instance, labels = views.instance.to(self.device), views.labels.to(self.device)
        if objective.self_supervised:
            loss = loss + losses.info_nce(embeddings, instance, s.temperature)
            loss = loss + s.koleo_weight * losses.koleo(embeddings)
            if bank is not None:
                loss = loss + s.collection_weight * losses.collection_contrast(
                    embeddings, bank.rows(views.ids), bank.vectors, s.temperature, bank.labels
                )
        if objective.supervised:
            known = labels >= 0
            if bool(known.any()):
                if proxies is not None:
                    loss = loss + losses.proxy_softmax(
                        embeddings[known], labels[known], proxies, s.temperature
                    )
                else:
                    loss = loss + losses.supervised_contrastive(embeddings[known], labels[known], 0.1)
        return loss

    def _forward(self, pixels: NDArray[np.float32]) -> torch.Tensor:
        """Embeddings of preprocessed pixels: the frozen stages without a graph, then the
        trained ones with one."""
        with torch.no_grad():
            if self._prefix is not None:
                features = torch.from_numpy(self._prefix(pixels)).to(self.device)
            else:
                features = self.suffix.frozen(torch.from_numpy(pixels).to(self.device))
        return self.suffix(features)

    def _embed_kept(self, images: Sequence[Image.Image]) -> NDArray[np.float32]:
        """`_embed`, keeping the vectors until the weights change: the validation at the end of
        an epoch and the bank at the start of the next embed the same images with the same
        weights. Kept by identity, with the image itself, so an id is never reused meanwhile."""
        if not images:
            return self._embed(images)
        missing = list({id(image): image for image in images if id(image) not in self._kept}.values())
        if missing:
            for image, vector in zip(missing, self._embed(missing), strict=True):
                self._kept[id(image)] = (image, vector)
        return np.stack([self._kept[id(image)][1] for image in images])

    @contextmanager
    def _keeping_vectors(self) -> Iterator[None]:
        """`_embed_kept` keeps vectors only inside this (one `fit`), emptied on the way in and out."""
        self._kept.clear()
        try:
            yield
        finally:
            self._kept.clear()

    def _pixels(self, image: Image.Image) -> NDArray[np.float32]:
        s = self.settings
        return resize_crop_normalise(image, s.short_side, s.image_size, 127.0, 128.0)

    def _embed(self, images: Sequence[Image.Image]) -> NDArray[np.float32]:
        """Embeddings of unedited images with the model as it is now (for validation)."""
        out = []
        with torch.no_grad():
            for start in range(0, len(images), 64):
                chunk = np.stack([self._pixels(image) for image in images[start : start + 64]])
                out.append(self._forward(chunk).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def _keeps(score: float, best: float, best_epoch: int) -> bool:
    """Whether an epoch scoring `score` becomes the one kept. It must beat the base model, but a
    tie with an earlier epoch keeps the later one and restarts the patience: the validation is a
    recall over a few hundred fixed views, where ties are common, and under the cosine schedule
    the early epochs' high learning rate moves it up and down before it climbs, so counting a
    tie as no progress could stop a run in that noise (docs/models.md, "Run to run")."""
    return score > best or (best_epoch > 0 and score == best)


def _view_workers(settings: TrainSettings) -> int:
    """Threads for the edited views: as set, else one per CPU this process may use, at most 8."""
    if settings.view_workers:
        return settings.view_workers
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(8, usable or 1)


def _unique(train: Sequence[TrainingImage]) -> list[TrainingImage]:
    """Each training image once, in first-seen order."""
    seen: dict[str, TrainingImage] = {}
    for img in train:
        seen.setdefault(img.id, img)
    return list(seen.values())


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
