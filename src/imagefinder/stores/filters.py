"""The payload filter grammar, one for every backend: which fields can be filtered and how a
value compares, so a `where` valid on one store is valid, with the same matches, on another.

- A filterable field is a top-level payload field, or one level of nesting written
  "parent.child" (a CSV's extra columns are kept under "meta": filter them as meta.<column>).
- Field names are 1 to 64 letters, digits, "_", "-", "." or spaces.
- Values compare as text: strings as they are, numbers and booleans as JSON ("2020", "true"), so
  where={"year": "2020"} matches a payload year of 2020. Values of more than 200 characters (long
  URIs) are not filterable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from imagefinder.errors import InvalidFilterError

FIELD_NAME = re.compile(r"^[\w .-]{1,64}$")
MAX_VALUE_CHARS = 200

# (field name, value as text), every one of which must match.
Conditions = tuple[tuple[str, str], ...]


def conditions(where: Mapping[str, object]) -> Conditions:
    """`where` checked against the grammar, in a canonical order; InvalidFilterError otherwise."""
    checked = []
    for name, value in where.items():
        text = field_text(value)
        if not FIELD_NAME.match(name) or text is None:
            raise InvalidFilterError(
                f"cannot filter on {name!r} = {value!r}: field names have 1 to 64 letters, digits, "
                f"_ - . or spaces; values are strings, numbers or booleans of at most "
                f"{MAX_VALUE_CHARS} characters"
            )
        checked.append((name, text))
    return tuple(sorted(checked))


def filterable_fields(payload: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(name, value as text) of every field of `payload` that a filter can select on."""
    for name, value in _flat_fields(payload):
        text = field_text(value)
        if text is not None and FIELD_NAME.match(name):
            yield name, text


def field_text(value: object) -> str | None:
    """Payload values compare as text: strings as they are, numbers and booleans as JSON."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool | int | float):
        text = json.dumps(value)
    else:
        return None
    return text if len(text) <= MAX_VALUE_CHARS else None


def _flat_fields(payload: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    for name, value in payload.items():
        if isinstance(value, Mapping):
            for child, inner in value.items():
                yield f"{name}.{child}", inner
        else:
            yield name, value
