"""Extra views of a query image, for the second search pass of `query_views=adaptive`.

One embedding of the whole image misses copies that are only a part of the query, or turned:
a photo pasted small into a larger picture, a screenshot around a photo, a photo mirrored and
rotated by 90 degrees. When the plain query finds no copy (no result above the copy threshold)
and the view gate (`imagefinder.view_gate`) says it looks like such a picture, the service
searches again with these views and keeps, for each image, its best view's score
less that view's penalty, so a view wins only clearly:

- the query transposed and transversed (mirrored and turned 90 degrees either way);
- five half-size regions, the four corners and the centre (each half the width and height);

each with a penalty of 0.05.

Measured on the dev benchmark when introduced (fp32 encoder, unregularised whitening):
near-duplicate recall@1 0.889 -> 0.931 (paste 0.49 -> 0.78, mirror_rot90 0.80 -> 0.96), micro-AP
0.859 -> 0.912, with 2.65 encoder runs per query on average (1 when the plain query finds a copy,
8 when it does not); current figures in bench/results/dev_benchmark.json (`make bench-quality`).
The layout was chosen among regular grids of 4, 5 and 9 regions at 0.4-0.7 of the side
(`make bench-views` -> bench/results/query_views_sweep.json): 9 regions gained 0.002 more for 4
more runs. Cheaper ways were tried once and dropped: regions pooled from one pass's feature map
(no gain: recall@1 0.884-0.892), and the extra views embedded at 192 px instead of 224 (0.926).

The turned views' penalty was 0.1 until the whitening was regularised. In the sweep after it,
every turn penalty from 0 to 0.15 scores within one query of the others; 0 to 0.06 find one
combo_hard copy more than 0.1 (recall@1 0.9312 against 0.9295, same_class mAP 0.688 against
0.684), so both kinds of view now take 0.05. That is one query of 567: a choice within noise.
"""

from __future__ import annotations

from PIL import Image

ROTATION_PENALTY = 0.05
REGION_PENALTY = 0.05
REGION_SIDE = 0.5  # of the query's width and height
# Top-left corners of the regions, as fractions of the width and height.
REGION_ORIGINS = ((0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.5, 0.5), (0.25, 0.25))
# A query is kept for its second pass at most this large on its short side: a half-size region
# still has the 224-256 px the encoders look at, and a 60-megapixel PNG is not held whole while
# its query (or a batch of 16) runs. JPEGs are already decoded near this size (draft mode).
VIEW_SOURCE_SIDE = 512
# Regions of a smaller image hold too few pixels to be a picture of their own (and a 1-pixel-wide
# image has no half): such queries get the turned views only.
MIN_SIDE_FOR_REGIONS = 32


def view_source(image: Image.Image) -> Image.Image:
    """`image`, shrunk to VIEW_SOURCE_SIDE on its short side when it is larger."""
    width, height = image.size
    scale = VIEW_SOURCE_SIDE / min(width, height)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def extra_views(image: Image.Image) -> list[tuple[Image.Image, float]]:
    """(view, penalty) for every extra view of `image`, in a fixed order."""
    views = [
        (image.transpose(Image.Transpose.TRANSPOSE), ROTATION_PENALTY),
        (image.transpose(Image.Transpose.TRANSVERSE), ROTATION_PENALTY),
    ]
    width, height = image.size
    if min(width, height) < MIN_SIDE_FOR_REGIONS:
        return views
    for left, top in REGION_ORIGINS:
        box = (
            int(left * width),
            int(top * height),
            int((left + REGION_SIDE) * width),
            int((top + REGION_SIDE) * height),
        )
        views.append((image.crop(box), REGION_PENALTY))
    return views
