"""ImageFinder's set of real-world edits, drawn at random to make training views of an image.

A copy of a photo met in the wild is rarely the file itself: it was cropped (often far off
centre), mirrored or turned, pasted small into another picture, framed by a screenshot's bars,
captioned or stamped with a logo, recoloured, blurred, shrunk, made noisy and saved again as a
poor JPEG. `RealWorldEdits` chains a random selection of such edits, each with its own chance
and with ranges wide on purpose (wider than any one benchmark's), so a network trained to map
every view back to its source learns to see through the edits rather than to recognise one
generator's exact parameters.

| edit | chance | range |
| --- | --- | --- |
| crop | 0.85 | 15-100 % of the area, aspect 0.6-1.7, anywhere in the image |
| mirror | 0.5 | horizontal |
| quarter turn | 0.15 | 90 or 270 degrees |
| small rotation | 0.2 | up to 25 degrees, solid fill, fill cropped away half the time |
| perspective or shear | 0.15 | corners moved by up to 20 % of the side, solid fill |
| paste into a background | 0.25 | 20-65 % of the side, onto another collection image or a synthetic one |
|  |  | (plain, gradient, noise), sometimes with a border or a tilt |
| screenshot frame | 0.15 | bars above and below with text and buttons, sometimes a side panel |
| caption / logo | 0.25 | a text band, text anywhere, a semi-transparent shape |
| colour | 0.8 | brightness, contrast 0.5-1.5, saturation 0-2, hue turned by up to 0.1 |
| greyscale | 0.15 | |
| blur | 0.25 | Gaussian, radius 0.5-3 |
| low resolution | 0.2 | shrunk to 48-160 px on the long side and enlarged again |
| noise | 0.2 | Gaussian (sigma 4-30), sometimes salt and pepper |
| JPEG | 0.5 | quality 8-75 |
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

# Views are made at about this size on their short side: the encoder looks at 224 px, and edits
# on a small image are cheap.
WORK_SIDE = 288
_WORDS = (
    "when you see it",
    "breaking news",
    "sale 50% off",
    "photo by",
    "look at this",
    "share",
    "like",
    "reply",
    "original content",
    "do not repost",
)


class RealWorldEdits:
    """Random chains of edits. `__call__(image, rng, others)` returns one edited view of `image`;
    `others` are other images of the collection, used as backgrounds to paste into."""

    def __init__(self, work_side: int = WORK_SIDE) -> None:
        self.work_side = work_side

    def __call__(
        self, image: Image.Image, rng: random.Random, others: Sequence[Image.Image] = ()
    ) -> Image.Image:
        view = shrink(image.convert("RGB"), self.work_side)
        if rng.random() < 0.85:
            view = _crop(view, rng)
        if rng.random() < 0.5:
            view = ImageOps.mirror(view)
        if rng.random() < 0.15:
            view = view.transpose(rng.choice([Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270]))
        if rng.random() < 0.2:
            view = _rotate(view, rng)
        if rng.random() < 0.15:
            view = _perspective(view, rng)
        framed = rng.random()
        if framed < 0.25:
            view = _paste(view, rng, others, self.work_side)
        elif framed < 0.40:
            view = _screenshot(view, rng)
        if rng.random() < 0.25:
            view = _overlay(view, rng)
        if rng.random() < 0.8:
            view = _colour(view, rng)
        if rng.random() < 0.15:
            view = ImageOps.grayscale(view).convert("RGB")
        if rng.random() < 0.25:
            view = view.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 3.0)))
        if rng.random() < 0.2:
            view = _low_resolution(view, rng)
        if rng.random() < 0.2:
            view = _noise(view, rng)
        if rng.random() < 0.5:
            view = _jpeg(view, rng.randint(8, 75))
        return view


def composite_view(
    image: Image.Image, rng: random.Random, others: Sequence[Image.Image], kind: str
) -> Image.Image:
    """A view of the kind a query's extra views exist for (`imagefinder.view_gate`): `image`
    pasted into a background ("paste"), framed as a screenshot ("screenshot") or turned a quarter,
    mirrored or not ("turn"), with milder edits around it."""
    if kind == "paste":
        return plain_view(_paste(image, rng, others, WORK_SIDE), rng)
    if kind == "screenshot":
        return _screenshot(plain_view(image, rng), rng)
    if kind == "turn":
        turns = (
            Image.Transpose.ROTATE_90,
            Image.Transpose.ROTATE_270,
            Image.Transpose.TRANSPOSE,
            Image.Transpose.TRANSVERSE,
        )
        return plain_view(image, rng).transpose(rng.choice(turns))
    raise ValueError(f"unknown kind of composite view: {kind}")


def plain_view(image: Image.Image, rng: random.Random) -> Image.Image:
    """`image` under milder edits that a plain query's single view already sees through: crops,
    mirror, colour, small rotations, text and shapes, low resolution, JPEG."""
    view = image
    if rng.random() < 0.7:
        view = _crop(view, rng)
    if rng.random() < 0.5:
        view = ImageOps.mirror(view)
    if rng.random() < 0.6:
        view = _colour(view, rng)
    if rng.random() < 0.2:
        view = _rotate(view, rng)
    if rng.random() < 0.2:
        view = _overlay(view, rng)
    if rng.random() < 0.2:
        view = _low_resolution(view, rng)
    if rng.random() < 0.5:
        view = _jpeg(view, rng.randint(10, 90))
    return view


def work_image(image: Image.Image) -> Image.Image:
    """An image as training keeps it in memory: RGB, shrunk to the edits' working size."""
    return shrink(image.convert("RGB"), WORK_SIDE)


def shrink(image: Image.Image, side: int) -> Image.Image:
    scale = side / min(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def _crop(image: Image.Image, rng: random.Random) -> Image.Image:
    w, h = image.size
    area = rng.uniform(0.15, 1.0) * w * h
    aspect = float(np.exp(rng.uniform(np.log(0.6), np.log(1.7))))
    cw = max(8, min(w, round((area * aspect) ** 0.5)))
    ch = max(8, min(h, round((area / aspect) ** 0.5)))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return image.crop((x, y, x + cw, y + ch))


def _fill(rng: random.Random) -> tuple[int, int, int]:
    grey = rng.randint(0, 255)
    return (
        (grey, grey, grey)
        if rng.random() < 0.5
        else (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))
    )


def _rotate(image: Image.Image, rng: random.Random) -> Image.Image:
    angle = rng.uniform(-25, 25)
    rotated = image.rotate(angle, Image.Resampling.BILINEAR, expand=rng.random() < 0.5, fillcolor=_fill(rng))
    if rng.random() < 0.5:  # crop the fill away, as an editor would
        margin = abs(np.sin(np.radians(angle))) * 0.5
        w, h = rotated.size
        box = (int(w * margin), int(h * margin), int(w * (1 - margin)), int(h * (1 - margin)))
        if box[2] - box[0] > 8 and box[3] - box[1] > 8:
            rotated = rotated.crop(box)
    return rotated


def _perspective(image: Image.Image, rng: random.Random) -> Image.Image:
    w, h = image.size

    def jitter(x: float, y: float) -> tuple[float, float]:
        return x + rng.uniform(-0.2, 0.2) * w, y + rng.uniform(-0.2, 0.2) * h

    # QUAD maps the output's corners to these source points (top-left, bottom-left,
    # bottom-right, top-right): moving them warps the picture.
    quad = (*jitter(0, 0), *jitter(0, h), *jitter(w, h), *jitter(w, 0))
    return image.transform(
        (w, h), Image.Transform.QUAD, quad, Image.Resampling.BILINEAR, fillcolor=_fill(rng)
    )


def _background(rng: random.Random, others: Sequence[Image.Image], size: tuple[int, int]) -> Image.Image:
    kind = rng.random()
    if others and kind < 0.5:
        return ImageOps.fit(rng.choice(others).convert("RGB"), size, Image.Resampling.BILINEAR)
    w, h = size
    if kind < 0.7:
        return Image.new("RGB", size, _fill(rng))
    if kind < 0.85:
        top, bottom = np.array(_fill(rng), np.float32), np.array(_fill(rng), np.float32)
        ramp = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
        pixels = np.broadcast_to(top + (bottom - top) * ramp, (h, w, 3))
        return Image.fromarray(pixels.astype(np.uint8))
    noise = np.random.default_rng(rng.getrandbits(32)).integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), np.uint8)
    return Image.fromarray(noise).resize(size, Image.Resampling.BICUBIC)


def _paste(image: Image.Image, rng: random.Random, others: Sequence[Image.Image], side: int) -> Image.Image:
    canvas_size = (int(side * rng.uniform(1.0, 1.6)), side)
    if rng.random() < 0.5:
        canvas_size = canvas_size[::-1]
    canvas = _background(rng, others, canvas_size)
    fraction = rng.uniform(0.2, 0.65)
    small = image.copy()
    small.thumbnail((max(8, int(canvas.width * fraction)), max(8, int(canvas.height * fraction))))
    if rng.random() < 0.3:
        small = ImageOps.expand(small, border=rng.randint(1, 6), fill=_fill(rng))
    if rng.random() < 0.25:
        small = small.convert("RGBA").rotate(rng.uniform(-12, 12), Image.Resampling.BILINEAR, expand=True)
    x = rng.randint(0, max(0, canvas.width - small.width))
    y = rng.randint(0, max(0, canvas.height - small.height))
    canvas.paste(small, (x, y), small if small.mode == "RGBA" else None)
    return canvas


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _screenshot(image: Image.Image, rng: random.Random) -> Image.Image:
    w, h = image.size
    top, bottom = int(h * rng.uniform(0.08, 0.3)), int(h * rng.uniform(0.0, 0.3))
    side = int(w * rng.uniform(0.3, 0.6)) if rng.random() < 0.25 else 0
    dark = rng.random() < 0.5
    ui = (rng.randint(0, 40),) * 3 if dark else (rng.randint(215, 255),) * 3
    ink = (230, 230, 230) if dark else (30, 30, 30)
    frame = Image.new("RGB", (w + side, h + top + bottom), ui)  # type: ignore[arg-type]
    frame.paste(image, (0, top))
    draw = ImageDraw.Draw(frame)
    font = _font(max(8, top // 4))
    draw.text((int(w * 0.05), top // 3), rng.choice(_WORDS), fill=ink, font=font)
    for i in range(rng.randint(0, 4)):  # buttons
        x, y = int(w * (0.6 + 0.1 * i)), top // 4
        draw.ellipse((x, y, x + top // 2, y + top // 2), fill=_fill(rng))
    for line in range(side and 6):
        draw.text((w + 6, top + line * (h // 7)), rng.choice(_WORDS), fill=ink, font=font)
    if bottom:
        draw.text((int(w * 0.05), h + top + bottom // 4), rng.choice(_WORDS), fill=ink, font=font)
    return frame


def _overlay(image: Image.Image, rng: random.Random) -> Image.Image:
    out = image.convert("RGBA")
    layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    w, h = out.size
    if rng.random() < 0.4:  # a meme band
        band = int(h * rng.uniform(0.08, 0.22))
        y = 0 if rng.random() < 0.5 else h - band
        draw.rectangle((0, y, w, y + band), fill=(*_fill(rng), rng.randint(150, 255)))
        draw.text(
            (w // 20, y + band // 4),
            rng.choice(_WORDS).upper(),
            fill=(255, 255, 255, 255),
            font=_font(max(8, band // 2)),
        )
    for _ in range(rng.randint(1, 3)):
        kind = rng.random()
        x, y = rng.randint(0, w - 1), rng.randint(0, h - 1)
        if kind < 0.5:
            size = max(8, int(min(w, h) * rng.uniform(0.05, 0.15)))
            draw.text((x, y), rng.choice(_WORDS), fill=(*_fill(rng), rng.randint(120, 255)), font=_font(size))
        else:  # a logo: a semi-transparent shape
            r = int(min(w, h) * rng.uniform(0.05, 0.2))
            shape = draw.ellipse if kind < 0.75 else draw.rectangle
            shape((x - r, y - r, x + r, y + r), fill=(*_fill(rng), rng.randint(60, 200)))
    return Image.alpha_composite(out, layer).convert("RGB")


def _colour(image: Image.Image, rng: random.Random) -> Image.Image:
    out = ImageEnhance.Brightness(image).enhance(rng.uniform(0.5, 1.5))
    out = ImageEnhance.Contrast(out).enhance(rng.uniform(0.5, 1.5))
    out = ImageEnhance.Color(out).enhance(rng.uniform(0.0, 2.0))
    if rng.random() < 0.3:
        hsv = np.array(out.convert("HSV"))
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(rng.uniform(-0.1, 0.1) * 255)) % 256
        out = Image.fromarray(hsv, "HSV").convert("RGB")
    return out


def _low_resolution(image: Image.Image, rng: random.Random) -> Image.Image:
    small = image.copy()
    long_side = rng.randint(48, 160)
    small.thumbnail((long_side, long_side), Image.Resampling.BILINEAR)
    return small.resize(image.size, rng.choice([Image.Resampling.NEAREST, Image.Resampling.BILINEAR]))


def _noise(image: Image.Image, rng: random.Random) -> Image.Image:
    generator = np.random.default_rng(rng.getrandbits(32))
    pixels = np.asarray(image, dtype=np.float32)
    pixels = pixels + generator.normal(0, rng.uniform(4, 30), pixels.shape)
    if rng.random() < 0.4:
        mask = generator.random(pixels.shape[:2]) < rng.uniform(0.01, 0.08)
        pixels[mask] = generator.choice([0.0, 255.0], size=(int(mask.sum()), 1))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    with Image.open(io.BytesIO(buffer.getvalue())) as reopened:
        return reopened.convert("RGB")
