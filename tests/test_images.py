from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imagefinder.errors import CorruptImageError, ImageTooLargeError, UnsupportedImageError
from imagefinder.images import ImageLimits, content_hash, decode_image
from tests.factories import encode, gradient, png_bomb, solid

LIMITS = ImageLimits(max_pixels=10_000_000, max_bytes=5_000_000)


def test_rgb_jpeg_round_trips() -> None:
    image = decode_image(encode(solid((200, 10, 10))), LIMITS)
    assert image.mode == "RGB" and image.size == (64, 48)
    assert np.allclose(np.asarray(image)[10, 10], (200, 10, 10), atol=6)


def test_alpha_is_composited_on_white() -> None:
    rgba = Image.new("RGBA", (20, 20), (0, 0, 255, 0))  # fully transparent blue
    image = decode_image(encode(rgba, "PNG"), LIMITS)
    assert image.mode == "RGB"
    assert tuple(np.asarray(image)[5, 5]) == (255, 255, 255)


def test_palette_with_transparency_is_composited() -> None:
    palette = Image.new("P", (10, 10), 0)
    palette.putpalette([0, 0, 0] * 256)
    data = encode(palette, "PNG", transparency=0)
    assert tuple(np.asarray(decode_image(data, LIMITS))[0, 0]) == (255, 255, 255)


def test_16_bit_grey_is_rescaled_not_clipped() -> None:
    pixels = np.full((16, 16), 32768, dtype=np.uint16)  # mid grey in 16 bits
    data = encode(Image.fromarray(pixels), "PNG")
    value = np.asarray(decode_image(data, LIMITS))[0, 0]
    assert 120 <= value[0] <= 135 and value[0] == value[1] == value[2]


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red in CMYK
    image = decode_image(encode(cmyk, "JPEG"), LIMITS)
    red, green, blue = np.asarray(image)[8, 8]
    assert image.mode == "RGB" and red > 200 and green < 60 and blue < 60


def test_animated_gif_uses_first_frame() -> None:
    frames = [solid((255, 0, 0)), solid((0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    red, _, blue = np.asarray(decode_image(data, LIMITS))[5, 5]
    assert red > 200 and blue < 50


def test_exif_orientation_is_applied() -> None:
    wide = Image.new("RGB", (60, 20), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    image = decode_image(encode(wide, "JPEG", exif=exif), LIMITS)
    assert image.size == (20, 60)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    with pytest.raises(ImageTooLargeError) as info:
        decode_image(png_bomb(), LIMITS, source="bomb.png")
    assert str(LIMITS.max_pixels) in str(info.value)
    assert info.value.limit == LIMITS.max_pixels


def test_oversized_file_is_refused() -> None:
    with pytest.raises(ImageTooLargeError, match="limit is 100"):
        decode_image(encode(gradient(1)), ImageLimits(max_pixels=10**7, max_bytes=100))


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.95])
def test_truncated_jpeg_is_corrupt(cut: float) -> None:
    data = encode(gradient(2, (400, 300)), "JPEG", quality=90)
    with pytest.raises(CorruptImageError):
        decode_image(data[: int(len(data) * cut)], LIMITS, source="cut.jpg")


@pytest.mark.parametrize(
    "data",
    [
        b"hello, I am text",
        b"<html><body>not an image</body></html>",
        b"%PDF-1.4\n%...",
        b'<svg xmlns="http://www.w3.org/2000/svg"></svg>',
        b"\xff\xd8\xff" + b"\x00" * 64,
    ],
)
def test_non_images_are_refused(data: bytes) -> None:
    with pytest.raises((UnsupportedImageError, CorruptImageError)):
        decode_image(data, LIMITS)


def test_empty_file_is_corrupt() -> None:
    with pytest.raises(CorruptImageError, match="empty"):
        decode_image(b"", LIMITS)


def test_draft_mode_decodes_large_jpeg_smaller_but_keeps_short_side() -> None:
    big = gradient(3, (2400, 1600))
    data = encode(big, "JPEG", quality=85)
    full = decode_image(data, LIMITS)
    drafted = decode_image(data, LIMITS, min_short_side=256)
    assert full.size == (2400, 1600)
    assert min(drafted.size) >= 256 and drafted.size[0] < 2400


def test_content_hash_is_sha256_of_bytes() -> None:
    assert content_hash(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert content_hash(io.BytesIO(b"x").getvalue()) != content_hash(b"y")


def test_image_over_our_pixel_limit_names_its_size_and_the_limit() -> None:
    # Under Pillow's own bomb threshold, over ours: refused from the header, before decoding.
    with pytest.raises(ImageTooLargeError, match=r"5000x4000 = 20000000 pixels, limit is 10000000"):
        decode_image(png_bomb(5000, 4000), LIMITS)
