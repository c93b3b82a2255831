"""An index as Parquet files, and back: ids, vectors, payloads and the encoder that made them.

Each file `part-NNNNN.parquet` has the columns `id` (string), `vector` (fixed-size list of
float32: the encoder's raw L2-normalised vectors, not the whitened search space, which is learned
again on import), `payload` (JSON text: everything the index keeps with the image), `model` and
`model_version`; the file's metadata holds the full encoder record. So embeddings computed
elsewhere can be imported into an index, and an index's embeddings can go to a data lake.

pyarrow is an optional extra (`pip install imagefinder[parquet]`), imported only here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imagefinder.encoders.base import EncoderInfo
from imagefinder.errors import SourceError
from imagefinder.ids import id_problem
from imagefinder.sources import parquet_parts
from imagefinder.stores.base import VectorStore, encoder_from_record, encoder_record

ENCODER_KEY = b"imagefinder.encoder"
FORMAT_KEY = b"imagefinder.format"
FORMAT = b"1"
ROWS_PER_FILE = 100_000
# Written last by an export; an ImageFinder export without it is incomplete.
MANIFEST = "_imagefinder.json"


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401 - the submodule is what is used
    except ImportError:
        needs = "Parquet export and import need pyarrow: pip install 'imagefinder[parquet]'"
        raise SourceError(needs) from None
    return pyarrow


@dataclass(frozen=True)
class ParquetExport:
    rows: int
    files: list[Path]


def export_parquet(store: VectorStore, folder: Path, rows_per_file: int = ROWS_PER_FILE) -> ParquetExport:
    """Write every image of `store` into `folder` (which must be empty or new)."""
    pa = _pyarrow()
    info = store.encoder_info
    if info is None or store.count() == 0:
        raise SourceError("the index is empty: nothing to export")
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise SourceError(f"{folder} is not empty: export into a new folder")
    metadata = {ENCODER_KEY: json.dumps(encoder_record(info)).encode(), FORMAT_KEY: FORMAT}
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("vector", pa.list_(pa.float32(), info.dim)),
            ("payload", pa.string()),
            ("model", pa.string()),
            ("model_version", pa.string()),
        ],
        metadata=metadata,
    )
    files: list[Path] = []
    rows = 0
    part: _Part | None = None
    for batch in store.items():
        if part is None or part.rows >= rows_per_file:
            if part is not None:
                files.append(part.close())
            part = _Part(pa, folder / f"part-{len(files):05d}.parquet", schema)
        ids, vectors, payloads = zip(*batch, strict=True)
        flat = np.ascontiguousarray(np.stack(vectors), dtype=np.float32).reshape(-1)
        part.write(
            pa.table(
                {
                    "id": pa.array(ids, pa.string()),
                    "vector": pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), info.dim),
                    "payload": pa.array([json.dumps(p, sort_keys=True) for p in payloads], pa.string()),
                    "model": pa.array([info.name] * len(ids), pa.string()),
                    "model_version": pa.array([info.version] * len(ids), pa.string()),
                },
                schema=schema,
            )
        )
        rows += len(ids)
    if part is not None:
        files.append(part.close())
    # Written last: an export without it was stopped before the end.
    manifest = {"rows": rows, "files": [f.name for f in files], "encoder": encoder_record(info)}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return ParquetExport(rows, files)


class _Part:
    """One part file, written a row group per batch (memory stays at one batch) under a hidden
    name, and renamed into place when whole: a kill mid-export leaves whole files only."""

    def __init__(self, pa: Any, path: Path, schema: Any) -> None:
        self.path = path
        self.rows = 0
        self._partial = path.with_name(f".{path.name}.partial")
        self._writer = pa.parquet.ParquetWriter(self._partial, schema)

    def write(self, table: Any) -> None:
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> Path:
        self._writer.close()
        os.replace(self._partial, self.path)
        return self.path


def parquet_encoder(folder: Path) -> EncoderInfo:
    """The encoder that made the vectors in `folder` (every file must agree), after checking that
    an ImageFinder export is complete."""
    pa = _pyarrow()
    found: set[EncoderInfo] = set()
    ours = False
    for path in _parts(folder):
        try:
            metadata = pa.parquet.read_schema(path).metadata or {}
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise SourceError(f"cannot read {path}: {exc}") from None
        if metadata.get(FORMAT_KEY, FORMAT) != FORMAT:
            raise SourceError(
                f"{path} is in export format {metadata[FORMAT_KEY]!r}, newer than this ImageFinder's"
            )
        ours = ours or FORMAT_KEY in metadata
        info = encoder_from_record(json.loads(metadata.get(ENCODER_KEY, b"{}")))
        if info is None:
            raise SourceError(f"{path} does not say which encoder made its vectors (not an export)")
        found.add(info)
    if len(found) != 1:
        raise SourceError(f"the files in {folder} come from different encoders: {sorted(map(str, found))}")
    if ours and folder.is_dir() and not (folder / MANIFEST).is_file():
        raise SourceError(f"{folder} is an incomplete export (no {MANIFEST}): export again")
    return found.pop()


def import_parquet(store: VectorStore, folder: Path, batch_size: int = 2048) -> int:
    """Upsert every row of the Parquet files in `folder` into `store` (bound to their encoder
    already); returns the rows imported. Rows are checked as the indexer's are: a valid id, a
    vector of the index's dimension (L2-normalised here, as the encoder's are), a JSON payload."""
    pa = _pyarrow()
    dim = store.encoder_info.dim if store.encoder_info else 0
    rows = 0
    for path in _parts(folder):
        try:
            batches = pa.parquet.ParquetFile(path).iter_batches(
                batch_size=batch_size, columns=["id", "vector", "payload"]
            )
            for batch in batches:
                ids, vectors, payloads = _checked(batch, dim, path, rows)
                store.upsert(ids, vectors, payloads)
                rows += len(ids)
        except (OSError, ValueError, KeyError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise SourceError(f"cannot import {path}: {exc}") from None
    return rows


def _checked(batch: Any, dim: int, path: Path, before: int) -> tuple[list[str], Any, list[dict[str, Any]]]:
    ids = [str(image_id) for image_id in batch.column("id").to_pylist()]
    vectors = batch.column("vector").to_pylist()
    texts = batch.column("payload").to_pylist()
    for offset, (image_id, vector, text) in enumerate(zip(ids, vectors, texts, strict=True)):
        where = f"{path.name} row {before + offset + 1}"
        problem = id_problem(image_id)
        if problem:
            raise SourceError(f"{where}: {problem}")
        if vector is None or len(vector) != dim:
            raise SourceError(
                f"{where}: the vector has {0 if vector is None else len(vector)} values, not {dim}"
            )
        if not isinstance(text, str):
            raise SourceError(f"{where}: no payload")
    matrix = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise SourceError(f"{path.name}: a vector is zero or not finite")
    payloads = []
    for text in texts:
        payload = json.loads(text)
        if not isinstance(payload, dict):
            raise SourceError(f"{path.name}: a payload is not a JSON object")
        payloads.append(payload)
    # Vectors from elsewhere may not be unit length; ours are, up to the store's float16 rounding,
    # and are kept exactly as exported.
    scale = np.where(np.abs(norms - 1.0) > 1e-3, norms, 1.0).astype(np.float32)
    return ids, matrix / scale[:, None], payloads


def _parts(folder: Path) -> list[Path]:
    parts = parquet_parts(folder)
    if not parts or not all(p.is_file() for p in parts):
        raise SourceError(f"no Parquet files in {folder}")
    return parts
