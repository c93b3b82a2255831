"""What makes an image id usable: one rule for every way ids enter (folder paths, CSV ids, the
API). Ids are opaque strings chosen by users; these rules only keep out what would break URLs,
logs or terminals downstream."""

from __future__ import annotations

import unicodedata
from functools import lru_cache

MAX_ID_LENGTH = 512
# An id is a path in the API's URLs (/images/{id}, /images/{id}/file): one ending like a
# sub-resource would be read as that sub-resource of another id.
SUB_RESOURCES = ("file", "thumbnail")


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
    if "\ufffd" in image_id:  # what bytes that are not UTF-8 become once decoded (a URL path)
        return f"the id {image_id!r} holds U+FFFD, the mark of bytes that were not valid UTF-8"
    if any(unicodedata.category(ch) == "Cf" for ch in image_id):
        return f"the id {image_id!r} contains invisible formatting characters (such as U+200B or U+202E)"
    segments = image_id.split("/")
    if any(segment in (".", "..") for segment in segments):
        return f"the id {image_id!r} has a '.' or '..' path segment, which web clients collapse"
    if len(segments) > 1 and segments[-1] in SUB_RESOURCES:
        return f"the id {image_id!r} ends in /{segments[-1]}, which names a sub-resource in the API"
    return None


@lru_cache(maxsize=1)
def id_pattern() -> str:
    """The rule above as a regular expression, for the OpenAPI document (clients and fuzzers
    learn from it which ids are accepted). Kept equal to `id_problem` by a test, for every
    string UTF-8 can carry: lone surrogates, which it cannot, are refused by the rule and left
    out of the pattern (regex engines such as Rust's cannot name them)."""
    refused = [
        code
        for code in range(0x110000)
        if code < 32 or code == 127 or code == 0xFFFD or unicodedata.category(chr(code)) == "Cf"
    ]
    ranges = []  # runs of consecutive code points as first-last: a shorter pattern
    for code in refused:
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    refused_class = "".join(
        _class_char(first) + (f"-{_class_char(last)}" if last > first else "") for first, last in ranges
    )
    dot_segment = r"(?!(?:.*/)?\.\.?(?:/|$))"
    sub_resource = rf"(?!.*/(?:{'|'.join(SUB_RESOURCES)})$)"
    return rf"^{dot_segment}{sub_resource}[^{refused_class}]{{1,{MAX_ID_LENGTH}}}$"


def _class_char(code: int) -> str:
    """A code point inside a regex character class: an escape where JSON and ECMA-262 take one
    (control characters), the character itself beyond the Basic Multilingual Plane."""
    return f"\\u{code:04x}" if code <= 0xFFFF else chr(code)
