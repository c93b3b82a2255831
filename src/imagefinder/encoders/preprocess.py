"""Image -> model input, as the TensorFlow EfficientNet-Lite reference defines it."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image


def resize_crop_normalise(
    image: Image.Image, short_side: int, crop: int, mean: float, std: float
) -> NDArray[np.float32]:
    """Resize so the short side is `short_side` (bicubic), centre-crop `crop` x `crop`,
    scale each 0..255 channel to (x - mean) / std, return (3, crop, crop) float32."""
    width, height = image.size
    scale = short_side / min(width, height)
    new_size = (max(crop, round(width * scale)), max(crop, round(height * scale)))
    # reducing_gap lets Pillow shrink large images in cheap integer steps first; the result
    # differs from a single bicubic pass by far less than JPEG noise.
    resized = image.resize(new_size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    left = (new_size[0] - crop) // 2
    top = (new_size[1] - crop) // 2
    cropped = resized.crop((left, top, left + crop, top + crop))
    pixels = np.asarray(cropped, dtype=np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))
