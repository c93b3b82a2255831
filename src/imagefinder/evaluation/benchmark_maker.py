"""Build a near-duplicate benchmark from your own photos, so you can measure your own domain.

Every source photo goes into `collection/` (as JPEG, long side at most 640 px) and gets one edited
copy per family in `queries/`; `ground_truth.csv` maps each query to its original, and
`query_transforms.csv` records the family and its exact parameters. The same seed gives the same
benchmark. Families (the dev benchmark's, in simplified form):

| family | edit |
| --- | --- |
| crop | keep 60-90 % of the area, off-centre |
| rotate | rotate 4-15 degrees, black fill, then centre-crop the fill away |
| flip | horizontal mirror and a mild crop |
| jpeg | downscale to 160-320 px, JPEG quality 20-50 |
| color | brightness, contrast and saturation changes |
| gray | greyscale with a contrast change |
| overlay | a caption band and a semi-transparent box |
| blur_lowres | blur, shrink to 64-96 px and enlarge again |
| paste | shrunk to 30-50 % of the side, pasted onto a plain background |
"""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from imagefinder.evaluation.runner import image_files

Edit = Callable[[Image.Image, random.Random], tuple[Image.Image, str]]


def _crop(image: Image.Image, rng: random.Random) -> tuple[Image.Image, str]:
    area = rng.uniform(0.6, 0.9)
    w, h = image.size
    cw, ch = int(w * area**0.5), int(h * area**0.5)
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return image.crop((x, y, x + cw, y + ch)), f"area={area:.2f} x={x} y={y}"


def _rotate(image: Image.Image, rng: random.Random) -> tuple[Image.Image, str]:
    angle = rng.choice([-1, 1]) * rng.uniform(4, 15)
    w, h = image.size
    rotated = image.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=(0, 0, 0))
    margin = 0.2
    return rotated.crop(
        (int(w * margin / 2), int(h * margin / 2), int(w * (1 - margin / 2)), int(h * (1 - margin / 2)))
    ), f"angle={angle:.1f}"


def _flip(image: Image.Image, rng: random.Random) -> tuple[Image.Image, str]:
    cropped, params = _crop(image, random.Random(rng.random()))
    return ImageOps.mirror(cropped), f"mirror {params}"


def _jpeg(image: Image.Image, rng: random.Random) -> tuple[Image.Image, str]:
    side, quality = rng.randint(160, 320), rng.randint(20, 50)
    small = image.copy()
    small.thumbnail((side, side))
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), f"side={side} quality={quality}"


def _color(image: Image.Image, rng: random.Random) -> tuple[Image.Image, str]:
    b, c, s = rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.4), rng.uniform(0.3, 1.7)
    out = ImageEnhance.Color(
        ImageEnhance.Contrast(ImageEnhance.Brightness(image).enhance(b)).enhance(c)
    ).enhance(s)
    return out, f"brightness={b:.2f} contrast={c:.2f} saturation={s:.2f}"


def _gray(image: Image.Image, rng: random.Random) -> tuple[Image.Image, str]:
    c = rng.uniform(0.7, 1.4)
    return ImageEnhance.Contrast(ImageOps.grayscale(image).convert("RGB")).enhance(c), f"contrast={c:.2f}"


def _overlay(image: Image.Image, rng: random.Random) -> tuple[Image.Image, str]:
    out = image.copy()
    draw = ImageDraw.Draw(out, "RGBA")
    w, h = out.size
    band = int(h * rng.uniform(0.1, 0.2))
    draw.rectangle((0, h - band, w, h), fill=(0, 0, 0, 200))
    draw.text((10, h - band + band // 3), "WHEN YOU SEE IT", fill=(255, 255, 255, 255))
    bw, bh = int(w * 0.25), int(h * 0.2)
    x, y = rng.randint(0, w - bw), rng.randint(0, max(0, h - band - bh))
    draw.rectangle((x, y, x + bw, y + bh), fill=(255, 255, 255, 110))
    return out, f"band={band} box=({x},{y},{bw},{bh})"


def _blur_lowres(image: Image.Image, rng: random.Random) -> tuple[Image.Image, str]:
    radius, side = rng.uniform(1.0, 2.5), rng.randint(64, 96)
    small = image.filter(ImageFilter.GaussianBlur(radius))
    small.thumbnail((side, side))
    scale = 256 / max(small.size)
    return small.resize((int(small.width * scale), int(small.height * scale)), Image.Resampling.BILINEAR), (
        f"radius={radius:.1f} side={side}"
    )


def _paste(image: Image.Image, rng: random.Random) -> tuple[Image.Image, str]:
    fraction = rng.uniform(0.3, 0.5)
    colour = tuple(rng.randint(0, 255) for _ in range(3))
    canvas = Image.new("RGB", (640, 480), colour)  # type: ignore[arg-type]
    small = image.copy()
    small.thumbnail((int(640 * fraction), int(480 * fraction)))
    x, y = rng.randint(0, 640 - small.width), rng.randint(0, 480 - small.height)
    canvas.paste(small, (x, y))
    return canvas, f"fraction={fraction:.2f} at=({x},{y}) background={colour}"


FAMILIES: dict[str, Edit] = {
    "crop": _crop,
    "rotate": _rotate,
    "flip": _flip,
    "jpeg": _jpeg,
    "color": _color,
    "gray": _gray,
    "overlay": _overlay,
    "blur_lowres": _blur_lowres,
    "paste": _paste,
}


def make_benchmark(
    source: Path, out: Path, seed: int = 0, families: list[str] | None = None
) -> dict[str, int]:
    chosen = families or list(FAMILIES)
    rng = random.Random(seed)
    (out / "collection").mkdir(parents=True, exist_ok=True)
    (out / "queries").mkdir(parents=True, exist_ok=True)
    truth_rows, transform_rows = [], []
    originals = 0
    for name, path in image_files(source).items():
        try:
            with Image.open(path) as opened:
                image = ImageOps.exif_transpose(opened).convert("RGB")
        except OSError:
            continue  # not a readable image: not part of the benchmark
        image.thumbnail((640, 640))
        originals += 1
        collection_name = f"c{originals:05d}.jpg"
        image.save(out / "collection" / collection_name, quality=92)
        for family in chosen:
            edited, params = FAMILIES[family](image, rng)
            query_name = f"q{len(truth_rows) + 1:06d}.jpg"
            edited.convert("RGB").save(out / "queries" / query_name, quality=88)
            truth_rows.append((query_name, collection_name))
            transform_rows.append((query_name, family, f"{params}; source={name}"))
    with open(out / "ground_truth.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["query_file", "expected_collection_file"])
        writer.writerows(truth_rows)
    with open(out / "query_transforms.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["query_file", "family", "params"])
        writer.writerows(transform_rows)
    return {"originals": originals, "queries": len(truth_rows)}
