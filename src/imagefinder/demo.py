"""A small demo collection of real photographs that needs no network: the photos scikit-image
ships inside its package (its other sample images are downloaded on demand and are skipped)."""

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


def write_demo_collection(target: Path) -> list[Path]:
    """Copy the bundled photos into `target`; return the files written."""
    source = skimage_data_dir()
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name in DEMO_PHOTOS:
        if (source / name).is_file():
            written.append(Path(shutil.copyfile(source / name, target / name)))
    return written
