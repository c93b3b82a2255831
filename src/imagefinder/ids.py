"""What makes an image id usable. Ids are opaque strings chosen by users (CSV ids, relative paths,
API ids); these rules only keep out what would break URLs, logs or terminals downstream."""

from __future__ import annotations

MAX_ID_LENGTH = 512


def id_problem(image_id: str) -> str | None:
    """Why `image_id` cannot be used, or None when it can."""
    if not image_id:
        return "the id is empty"
    if len(image_id) > MAX_ID_LENGTH:
        return f"the id is longer than {MAX_ID_LENGTH} characters"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in image_id):
        return f"the id {image_id!r} contains control characters"
    try:
        image_id.encode("utf-8")
    except UnicodeEncodeError:  # a file name that is not valid UTF-8 on disk
        return f"the id {image_id!r} is not valid UTF-8"
    return None
