"""What fine-tuning learns from: the indexed images, read again from where the index recorded
them, and optional labels (a CSV of `id,label`, or a folder with one subfolder per label).

An image that can no longer be read (file gone, URL down, corrupt) is reported and skipped; a
label for an id the index does not hold is reported and ignored. Only the whole input being
unusable (no label column, one class only, nothing readable) is an error.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from PIL import Image

from imagefinder.errors import ImageFinderError, SourceError
from imagefinder.evaluation.runner import image_files
from imagefinder.images import ImageLimits, decode_image
from imagefinder.sources import read_file
from imagefinder.stores.base import Payload
from imagefinder.training.augment import WORK_SIDE, work_image

ReadUrl = Callable[[str], bytes]


class TrainingDataError(ImageFinderError):
    """The training data cannot be used as given (labels without a label column, one class)."""


@dataclass
class LoadedImages:
    ids: list[str] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)
    labels: list[int | None] = field(default_factory=list)
    label_names: list[str] = field(default_factory=list)
    # (where, why) for every image or label row left out.
    skipped: list[tuple[str, str]] = field(default_factory=list)
    digest: Any = field(default_factory=hashlib.sha256)

    def fingerprint(self) -> str:
        """SHA-256 over every training image's id, content hash and label, in order."""
        return self.digest.hexdigest()


def read_labels_csv(path: Path) -> dict[str, str]:
    """id -> label from a CSV with `id` and `label` columns (others ignored)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in reader.fieldnames or []]
            if "id" not in columns or "label" not in columns:
                raise TrainingDataError(
                    f"{path}: a labels CSV needs the columns id and label; "
                    f"it has {', '.join(columns) or 'none'}"
                )
            labels = {}
            for row in reader:
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                if row["id"] and row["label"]:
                    labels[row["id"]] = row["label"]
    except OSError as exc:
        raise TrainingDataError(f"{path}: {exc.strerror or exc}") from None
    return labels


def check_classes(labels: Iterable[str]) -> list[str]:
    names = sorted(set(labels))
    if len(names) < 2:
        raise TrainingDataError(
            "supervised fine-tuning needs at least two labels; "
            f"found {len(names)} ({', '.join(names) or 'none'})"
        )
    return names


class ImageReader:
    """Reads an indexed image again: its kept copy, its file, or its URL."""

    def __init__(self, limits: ImageLimits, read_url: ReadUrl | None) -> None:
        self._limits = limits
        self._read_url = read_url

    def read(self, image_id: str, payload: Payload) -> bytes:
        for key in ("file", "uri"):
            value = str(payload.get(key) or "")
            if not value:
                continue
            scheme = urlparse(value).scheme
            if scheme in ("http", "https"):
                if self._read_url is None:
                    raise SourceError(f"{image_id}: {value} is a URL and this run fetches none")
                return self._read_url(value)
            path = Path(value[7:] if scheme == "file" else value)
            if path.is_file():
                return read_file(path, self._limits.max_bytes)
        raise SourceError(f"{image_id}: its original is gone (no kept copy, file or URL to read)")

    def decode(self, data: bytes, where: str) -> Image.Image:
        return work_image(decode_image(data, self._limits, where, WORK_SIDE))


def load_indexed(
    items: Iterator[tuple[str, Payload]],
    reader: ImageReader,
    labels: dict[str, str] | None,
    max_images: int,
) -> LoadedImages:
    """The indexed images (with `labels`, only the labelled ones), at most `max_images`."""
    loaded = LoadedImages()
    wanted = dict(labels) if labels is not None else None
    names = check_classes(wanted.values()) if wanted is not None else []
    loaded.label_names = names
    for image_id, payload in items:
        if wanted is not None and image_id not in wanted:
            continue
        label = wanted.pop(image_id) if wanted is not None else None
        if len(loaded.ids) >= max_images:
            loaded.skipped.append((image_id, f"over the limit of {max_images} training images"))
            continue
        try:
            image = reader.decode(reader.read(image_id, payload), image_id)
        except ImageFinderError as exc:
            loaded.skipped.append((image_id, str(exc)))
            continue
        _add(
            loaded,
            image_id,
            image,
            str(payload.get("hash", "")),
            names.index(label) if label else None,
            label,
        )
    for image_id in sorted(wanted or {}):
        loaded.skipped.append((image_id, "labelled, but not in the index"))
    return loaded


def load_labelled_folder(root: Path, reader: ImageReader, max_images: int) -> LoadedImages:
    """Images under `root/<label>/`, each labelled by its subfolder."""
    if not root.is_dir():
        raise TrainingDataError(f"{root}: not a folder (it should hold one subfolder per label)")
    by_label = {child.name: child for child in sorted(root.iterdir()) if child.is_dir()}
    loaded = LoadedImages(label_names=check_classes(by_label))
    for label, folder in by_label.items():
        for name, path in image_files(folder).items():
            image_id = f"{label}/{name}"
            if len(loaded.ids) >= max_images:
                loaded.skipped.append((image_id, f"over the limit of {max_images} training images"))
                continue
            try:
                data = read_file(path, reader._limits.max_bytes)
                image = reader.decode(data, str(path))
            except ImageFinderError as exc:
                loaded.skipped.append((str(path), str(exc)))
                continue
            _add(
                loaded,
                image_id,
                image,
                hashlib.sha256(data).hexdigest(),
                loaded.label_names.index(label),
                label,
            )
    return loaded


def _add(
    loaded: LoadedImages,
    image_id: str,
    image: Image.Image,
    digest: str,
    label: int | None,
    label_name: str | None,
) -> None:
    loaded.ids.append(image_id)
    loaded.images.append(image)
    loaded.labels.append(label)
    loaded.digest.update(f"{image_id}\0{digest}\0{label_name or ''}\n".encode())


def merge_labels(unlabelled: LoadedImages, labelled: LoadedImages) -> LoadedImages:
    """Both kinds at once: every indexed image for copy training, labels where known."""
    by_id = dict(zip(labelled.ids, labelled.labels, strict=True))
    merged = LoadedImages(label_names=labelled.label_names, skipped=unlabelled.skipped + labelled.skipped)
    for image_id, image in zip(unlabelled.ids, unlabelled.images, strict=True):
        _add(merged, image_id, image, "", by_id.get(image_id), None)
    merged.digest = _joint_digest(unlabelled, labelled)
    return merged


def concatenate(first: LoadedImages, second: LoadedImages) -> LoadedImages:
    """The images of both (indexed ones for copy training, a labelled folder's for labels)."""
    return LoadedImages(
        ids=first.ids + second.ids,
        images=first.images + second.images,
        labels=first.labels + second.labels,
        label_names=second.label_names,
        skipped=first.skipped + second.skipped,
        digest=_joint_digest(first, second),
    )


def _joint_digest(first: LoadedImages, second: LoadedImages) -> Any:
    """The fingerprint of training data made of two loaded sets."""
    return hashlib.sha256((first.fingerprint() + second.fingerprint()).encode())
