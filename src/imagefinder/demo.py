"""A small demo collection of real photographs that needs no network: the photos scikit-image
ships inside its package (its other sample images are downloaded on demand and are skipped), and
edited copies of a few of them (`make-benchmark`'s edits: crops, captions, mirrors, colour, heavy
JPEG), so that a first search shows what the tool is for: copies flagged, similar pictures next
to each other, and duplicate groups."""

from __future__ import annotations

import shutil
from pathlib import Path

# Real photographs bundled in skimage/data (not the synthetic or downloaded ones).
DEMO_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "page.png",
    "retina.jpg",
    "rocket.jpg",
    "text.png",
)


def skimage_data_dir() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


# Photos that get edited copies in the demo, and the edits (make-benchmark's families).
EDITED = {
    "chelsea.png": ("crop", "overlay", "gray"),
    "coffee.png": ("crop", "jpeg"),
    "astronaut.png": ("flip", "color"),
    "rocket.jpg": ("crop", "paste"),
    "motorcycle_left.png": ("overlay", "jpeg"),
}


def write_demo_edits(target: Path, seed: int = 0) -> list[Path]:
    """Write the edited copies of `EDITED` photos (already in `target`) as JPEG files named
    `<photo>-copy-<edit>.jpg`; return the files written."""
    import random

    from PIL import Image

    from imagefinder.evaluation.benchmark_maker import FAMILIES

    rng = random.Random(seed)
    written = []
    for name, edits in EDITED.items():
        if not (target / name).is_file():
            continue
        with Image.open(target / name) as opened:
            photo = opened.convert("RGB")
        for edit in edits:
            copy, _ = FAMILIES[edit](photo, rng)
            path = target / f"{Path(name).stem}-copy-{edit}.jpg"
            copy.convert("RGB").save(path, quality=85)
            written.append(path)
    return written


def write_demo_collection(target: Path) -> list[Path]:
    """Copy the bundled photos into `target`; return the files written."""
    source = skimage_data_dir()
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name in DEMO_PHOTOS:
        if (source / name).is_file():
            written.append(Path(shutil.copyfile(source / name, target / name)))
    return written
