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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imagefinder.encoders.base import EncoderInfo
from imagefinder.errors import SourceError
from imagefinder.stores.base import VectorStore, encoder_from_record, encoder_record

ENCODER_KEY = b"imagefinder.encoder"
FORMAT_KEY = b"imagefinder.format"
FORMAT = b"1"
ROWS_PER_FILE = 100_000


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
    for part, chunk in enumerate(_chunks(store, rows_per_file)):
        ids, vectors, payloads = zip(*chunk, strict=True)
        flat = np.ascontiguousarray(np.stack(vectors), dtype=np.float32).reshape(-1)
        table = pa.table(
            {
                "id": pa.array(ids, pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), info.dim),
                "payload": pa.array([json.dumps(p, sort_keys=True) for p in payloads], pa.string()),
                "model": pa.array([info.name] * len(ids), pa.string()),
                "model_version": pa.array([info.version] * len(ids), pa.string()),
            },
            schema=schema,
        )
        path = folder / f"part-{part:05d}.parquet"
        partial = folder / f".{path.name}.partial"
        pa.parquet.write_table(table, partial)
        os.replace(partial, path)  # a kill mid-export leaves whole files only
        files.append(path)
        rows += len(ids)
    return ParquetExport(rows, files)


def _chunks(store: VectorStore, size: int) -> Iterator[list[tuple[str, Any, Any]]]:
    chunk: list[tuple[str, Any, Any]] = []
    for batch in store.items():
        for row in batch:
            chunk.append(row)
            if len(chunk) >= size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def parquet_encoder(folder: Path) -> EncoderInfo:
    """The encoder that made the vectors in `folder` (every file must agree)."""
    pa = _pyarrow()
    found: set[EncoderInfo] = set()
    for path in _parts(folder):
        metadata = pa.parquet.read_schema(path).metadata or {}
        record = json.loads(metadata.get(ENCODER_KEY, b"{}"))
        info = encoder_from_record(record)
        if info is None:
            raise SourceError(f"{path} does not say which encoder made its vectors (not an export)")
        found.add(info)
    if len(found) != 1:
        raise SourceError(f"the files in {folder} come from different encoders: {sorted(map(str, found))}")
    return found.pop()


def import_parquet(store: VectorStore, folder: Path, batch_size: int = 2048) -> int:
    """Upsert every row of the Parquet files in `folder` into `store` (bound to their encoder
    already); returns the rows imported."""
    pa = _pyarrow()
    rows = 0
    for path in _parts(folder):
        for batch in pa.parquet.ParquetFile(path).iter_batches(
            batch_size=batch_size, columns=["id", "vector", "payload"]
        ):
            ids = batch.column("id").to_pylist()
            vectors = batch.column("vector").flatten().to_numpy(zero_copy_only=False).reshape(len(ids), -1)
            payloads = [json.loads(text) for text in batch.column("payload").to_pylist()]
            store.upsert(ids, vectors.astype(np.float32, copy=False), payloads)
            rows += len(ids)
    return rows


def _parts(folder: Path) -> list[Path]:
    parts = sorted(folder.glob("*.parquet")) if folder.is_dir() else [folder]
    if not parts or not all(p.is_file() for p in parts):
        raise SourceError(f"no Parquet files in {folder}")
    return parts
