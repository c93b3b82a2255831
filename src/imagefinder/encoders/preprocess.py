"""Image -> model input, as the TensorFlow EfficientNet-Lite reference defines it."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image


def resize_crop_normalise(
    image: Image.Image, short_side: int, crop: int, mean: float, std: float, crop_only: bool = True
) -> NDArray[np.float32]:
    """Resize so the short side is `short_side` (bicubic), centre-crop `crop` x `crop`,
    scale each 0..255 channel to (x - mean) / std, return (3, crop, crop) float32.

    With `crop_only` (the default), only the centre crop is resampled: `box` is that crop in the
    source's coordinates, so the pixels cut away are never computed (1.4 instead of 2.6 ms on a
    draft-decoded photo). It equals resizing the whole image, then cropping, up to rounding (a
    grey level here and there), but that rounding moves vectors slightly, so encoders registered
    in MLflow before it (no `crop_only` in their spec) keep the old way (see encoders.pyfunc)."""
    width, height = image.size
    scale = short_side / min(width, height)
    new_size = (max(crop, round(width * scale)), max(crop, round(height * scale)))
    left = (new_size[0] - crop) // 2
    top = (new_size[1] - crop) // 2
    # reducing_gap lets Pillow shrink large images in cheap integer steps first; the result
    # differs from a single bicubic pass by far less than JPEG noise.
    if crop_only:
        x_step, y_step = width / new_size[0], height / new_size[1]
        box = (left * x_step, top * y_step, (left + crop) * x_step, (top + crop) * y_step)
        cropped = image.resize((crop, crop), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
    else:
        resized = image.resize(new_size, Image.Resampling.BICUBIC, reducing_gap=3.0)
        cropped = resized.crop((left, top, left + crop, top + crop))
    # Channels first while still uint8 (a quarter of the bytes to move), then one float copy
    # normalised in place.
    pixels = np.ascontiguousarray(np.asarray(cropped).transpose(2, 0, 1)).astype(np.float32)
    pixels -= mean
    pixels *= 1.0 / std
    return pixels
