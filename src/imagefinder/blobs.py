"""Keep original image files on disk, named by content hash (so the same bytes are kept once).

Used for `--keep-files DIR` while indexing and for images uploaded through the API, so that
`GET /images/{id}/file` can serve the original."""

from __future__ import annotations

import os
import tempfile
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


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, data: bytes, content_hash: str) -> Path:
        """Write atomically (temp file, fsync, rename); an existing blob is left as it is."""
        extension = _EXTENSIONS.get(sniff_format(data[:16]) or "", ".bin")
        target = self.root / content_hash[:2] / f"{content_hash}{extension}"
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
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
