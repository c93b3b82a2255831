"""What a duplicates scan remembers for the next one, so a later scan queries only the images added
or changed since (`duplicates.DuplicateFinder`).

A scan's pairs stay true as long as the scores they were measured with do: the same search space
(projection), filter and number of neighbours. `ScanBasis` is that; a later scan with another
basis starts over. The pairs are remembered down to a floor `MARGIN` below the threshold, because
the calibrated threshold moves a little with every index run (it is calibrated on a random
sample): a later scan whose threshold is at or above the floor reuses them. What is remembered:
every scanned image's content signature (its content hash), so an image replaced under the same
id is scanned again, and the pairs found down to the floor.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from imagefinder.stores.base import Payload

Pair = tuple[str, str]
MARGIN = 0.05


@dataclass(frozen=True)
class ScanBasis:
    where: dict[str, Any]
    projection_id: str
    encoder: str
    neighbours: int


@dataclass
class PreviousScan:
    basis: ScanBasis
    floor: float  # every pair of two scanned images at or above it is in `pairs`
    images: dict[str, str]  # id -> content signature
    pairs: dict[Pair, float]


class ScanMemory(Protocol):
    def load(self) -> PreviousScan | None: ...

    def save(self, scan: PreviousScan) -> None: ...


def signature(payload: Payload) -> str:
    """What tells one image's content from the next under the same id."""
    return str(payload.get("hash") or payload.get("added_at") or "")[:16]


class FileScanMemory:
    """One gzipped JSON file, replaced whole (a reader never sees half of it). An unreadable file
    is a scan to start over, never an error."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def load(self) -> PreviousScan | None:
        try:
            with gzip.open(self._path, "rt", encoding="utf-8") as handle:
                fields = json.load(handle)
            return PreviousScan(
                ScanBasis(**fields["basis"]),
                float(fields["floor"]),
                {str(k): str(v) for k, v in fields["images"].items()},
                {(str(a), str(b)): float(score) for a, b, score in fields["pairs"]},
            )
        except (OSError, ValueError, KeyError, TypeError, EOFError, zlib.error):
            return None

    def save(self, scan: PreviousScan) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # A name of its own: two scans at once each write their own file, and the last replace wins.
        handle, name = tempfile.mkstemp(
            prefix=self._path.name + ".", suffix=".partial", dir=self._path.parent
        )
        os.close(handle)
        partial = Path(name)
        document = {
            "basis": asdict(scan.basis),
            "floor": scan.floor,
            "images": scan.images,
            "pairs": [[a, b, score] for (a, b), score in scan.pairs.items()],
        }
        with gzip.open(partial, "wt", encoding="utf-8", compresslevel=3) as handle:
            json.dump(document, handle, separators=(",", ":"))
        with open(partial, "rb") as written:
            os.fsync(written.fileno())
        partial.replace(self._path)
