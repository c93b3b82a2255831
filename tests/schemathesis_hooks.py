"""Hooks for the schemathesis CLI run against a real server (`SCHEMATHESIS_HOOKS=tests.schemathesis_hooks`).

The OpenAPI document says image parts are image/png, image/jpeg, ...; JSON Schema cannot say "a
decodable image", so these strategies give schemathesis real ones to send (varied sizes, colours
and content) where it draws from media type strategies (see tests/schemathesis.toml for where it
does not). Every URL query is pointed at a real image on a local server (`ST_IMAGE_URL`):
a schema-valid URL on the open internet cannot be fetched here.
"""

from __future__ import annotations

import io
import os
from typing import Any

import schemathesis
from hypothesis import strategies as st
from PIL import Image, ImageDraw


@st.composite
def _images(draw: st.DrawFn, image_format: str) -> bytes:
    width = draw(st.integers(24, 320))
    height = draw(st.integers(24, 320))
    background = draw(st.tuples(*[st.integers(0, 255)] * 3))
    image = Image.new("RGB", (width, height), background)
    pen = ImageDraw.Draw(image)
    for _ in range(draw(st.integers(0, 4))):
        x0, x1 = sorted(draw(st.lists(st.integers(0, width), min_size=2, max_size=2)))
        y0, y1 = sorted(draw(st.lists(st.integers(0, height), min_size=2, max_size=2)))
        pen.rectangle((x0, y0, x1, y1), fill=draw(st.tuples(*[st.integers(0, 255)] * 3)))
    out = io.BytesIO()
    image.save(out, format=image_format)
    return out.getvalue()


schemathesis.openapi.media_type("image/png", _images("PNG"))
schemathesis.openapi.media_type("image/jpeg", _images("JPEG"))


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: Any) -> None:
    """Applies to documented examples and to generated cases alike (map_body sees only the latter)."""
    if isinstance(case.body, dict) and isinstance(case.body.get("url"), str):
        case.body = {**case.body, "url": os.environ["ST_IMAGE_URL"]}
