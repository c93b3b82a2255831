"""Keep original image files on disk, named by content hash (so the same bytes are kept once).

Used for `--keep-files DIR` while indexing and for images uploaded through the API, so that
`GET /images/{id}/file` can serve the original."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from imagefinder.images import sniff_format

_EXTENSIONS = {
    "JPEG": ".jpg",
    "MPO": ".jpg",
    "PNG": ".png",
    "WEBP": ".webp",
    "GIF": ".gif",
    "BMP": ".bmp",
    "TIFF": ".tif",
}


# A partial file older than this was left by a process killed while writing it (a write takes
# well under a second); younger ones may belong to another process writing right now.
STALE_PARTIAL_S = 3600


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        # Partial files are written here, apart from the blobs, so that sweeping them costs one
        # small folder's listing, not a walk over every kept original.
        self._partials = root / ".partial"
        self._sweep()

    def put(self, data: bytes, content_hash: str) -> Path:
        """Write atomically (temp file, fsync, rename); an existing blob is left as it is."""
        extension = _EXTENSIONS.get(sniff_format(data[:16]) or "", ".bin")
        target = self.root / content_hash[:2] / f"{content_hash}{extension}"
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        self._partials.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self._partials, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, target)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
        return target

    def holds(self, path: Path) -> bool:
        """Whether `path` is one of this store's blobs (not a file the user indexed in place)."""
        try:
            return path.resolve().is_relative_to(self.root.resolve()) and path.is_file()
        except OSError:
            return False

    def _sweep(self) -> None:
        try:
            partials = list(os.scandir(self._partials))
        except FileNotFoundError:
            return
        cutoff = time.time() - STALE_PARTIAL_S
        for entry in partials:
            try:
                if entry.name.endswith(".tmp") and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
            except FileNotFoundError:
                pass  # another process finished or swept it meanwhile
