"""What a duplicates scan remembers for the next one, so a later scan queries only the images added
or changed since (`duplicates.DuplicateFinder`).

A scan's pairs stay true as long as the scores they were measured with do: the same search space
(projection), filter and number of neighbours. `ScanBasis` is that; a later scan with another
basis starts over. The pairs are remembered down to a floor `MARGIN` below the threshold, because
the calibrated threshold moves a little with every index run (it is calibrated on a random
sample): a later scan whose threshold is at or above the floor reuses them.

What is remembered of the images is one 8-byte fingerprint of each image's id and content hash,
kept sorted (8 MB for a million images, where a dictionary of ids would take a hundred times
more): an image whose fingerprint is there was scanned as it is now; an image replaced under the
same id has another fingerprint, so it is scanned again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
import zlib
from array import array
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

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
    fingerprints: NDArray[np.uint64]  # sorted, one per scanned image (`fingerprint`)
    pairs: dict[Pair, float]

    def knows(self, print_: int) -> bool:
        at = int(np.searchsorted(self.fingerprints, np.uint64(print_)))
        return at < len(self.fingerprints) and int(self.fingerprints[at]) == print_


class ScanMemory(Protocol):
    def load(self) -> PreviousScan | None: ...

    def save(self, scan: PreviousScan) -> None: ...


def fingerprint(image_id: str, payload: Payload) -> int:
    """One image as it is now: its id and its content (hash, else when it was added); 0 when the
    payload says nothing about the content (such an image is always scanned again)."""
    content = str(payload.get("hash") or payload.get("added_at") or "")
    if not content:
        return 0
    digest = hashlib.blake2b(f"{image_id}\0{content}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


def sorted_prints(prints: array) -> NDArray[np.uint64]:  # type: ignore[type-arg]
    return np.sort(np.frombuffer(prints, dtype=np.uint64)) if len(prints) else np.zeros(0, np.uint64)


class FileScanMemory:
    """One compressed NumPy archive, replaced whole (a reader never sees half of it). An
    unreadable file is a scan to start over, never an error."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def load(self) -> PreviousScan | None:
        try:
            with np.load(self._path, allow_pickle=False) as saved:
                header = json.loads(str(saved["header"]))
                firsts, seconds, scores = saved["first"], saved["second"], saved["score"]
                together = zip(firsts, seconds, scores, strict=True)
                pairs = {(str(a), str(b)): float(score) for a, b, score in together}
                return PreviousScan(
                    ScanBasis(**header["basis"]), float(header["floor"]), saved["fingerprints"], pairs
                )
        except (OSError, ValueError, KeyError, TypeError, EOFError, zlib.error, zipfile.BadZipFile):
            return None

    def save(self, scan: PreviousScan) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # A name of its own: two scans at once each write their own file, and the last replace wins.
        descriptor, name = tempfile.mkstemp(".partial", self._path.name + ".", self._path.parent)
        os.close(descriptor)
        partial = Path(name)
        pairs = list(scan.pairs.items())
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            header=np.array(json.dumps({"basis": asdict(scan.basis), "floor": scan.floor})),
            fingerprints=scan.fingerprints.astype(np.uint64),
            first=np.array([a for (a, _), _ in pairs], dtype=str),
            second=np.array([b for (_, b), _ in pairs], dtype=str),
            score=np.array([score for _, score in pairs], dtype=np.float32),
        )
        with open(partial, "wb") as handle:
            handle.write(buffer.getvalue())
            handle.flush()
            os.fsync(handle.fileno())
        partial.replace(self._path)
