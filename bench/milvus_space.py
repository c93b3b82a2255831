"""How Milvus honours the whitened search space, measured next to the embedded store.

The dev benchmark's near-duplicate collection is indexed once into an embedded store (whitened,
as the service fits it), copied into a Milvus collection on a local server started here, and its
queries (one view each) are embedded once. Then each configuration searches the same vectors,
k=10: the embedded store (exact, whitened); Milvus with the raw-cosine space (what Milvus did
before search spaces); Milvus re-scoring `rerank` raw candidates per view in the whitened space.

usage: python bench/milvus_space.py [--benchmarks ../shared/benchmarks] [--out FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from imagefinder.config import Settings
from imagefinder.search_space import SearchSpace
from imagefinder.sources import FolderSource
from imagefinder.stores.embedded import EmbeddedStore
from imagefinder.wiring import build_configured_encoder, service_for

ROOT = Path(__file__).resolve().parents[1]
K = 10


def recall(store: Any, vectors: np.ndarray, expected: list[str]) -> dict[str, float]:
    at1 = at10 = 0
    latencies = []
    for vector, want in zip(vectors, expected, strict=True):
        started = time.perf_counter()
        hits = store.search(vector, K)
        latencies.append((time.perf_counter() - started) * 1000)
        ids = [hit.id for hit in hits]
        at1 += ids[:1] == [want]
        at10 += want in ids
    return {
        "recall@1": round(at1 / len(expected), 4),
        "recall@10": round(at10 / len(expected), 4),
        "search_ms_median": round(statistics.median(latencies), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--benchmarks", type=Path, default=ROOT.parent / "shared" / "benchmarks")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "milvus_space.json")
    args = parser.parse_args()
    task = args.benchmarks / "near_duplicate"
    if not task.is_dir():
        sys.exit(f"{task} not found")
    from milvus import MilvusServer

    from imagefinder.stores.milvus import MilvusStore

    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        settings = Settings()
        encoder = build_configured_encoder(settings)
        service = service_for(settings, encoder, EmbeddedStore(work / "index"))
        service.index(FolderSource(task / "collection", settings.images.max_bytes))
        embedded = service.store
        with open(task / "ground_truth.csv") as handle:
            truth = {row["query_file"]: row["expected_collection_file"] for row in csv.DictReader(handle)}
        names = sorted(truth)
        vectors = np.concatenate(
            [
                service.embed_prepared([service.prepare((task / "queries" / name).read_bytes()).pixels])
                for name in names
            ]
        )
        expected = [truth[name] for name in names]

        server = MilvusServer()
        server.set_base_dir(str(work / "milvus"))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            server.listen_port = probe.getsockname()[1]
        server.start()
        try:
            address = f"http://127.0.0.1:{server.listen_port}"
            milvus = MilvusStore(address, "space_bench")
            milvus.bind_encoder(embedded.encoder_info)  # type: ignore[arg-type]
            for batch in embedded.items():
                ids, stored, payloads = zip(*batch, strict=True)
                milvus.upsert(list(ids), np.stack(stored), list(payloads))
            milvus.optimise()
            whitened = embedded.search_space
            rows: dict[str, Any] = {"embedded exact, whitened": recall(embedded, vectors, expected)}
            milvus.set_search_space(SearchSpace())
            rows["milvus raw cosines (before)"] = recall(milvus, vectors, expected)
            milvus.set_search_space(whitened)
            for rerank in (K + 16, 50, 100, 200):
                milvus._rerank = rerank  # noqa: SLF001  (the constructor's setting, per row here)
                rows[f"milvus whitened, rerank {rerank}"] = recall(milvus, vectors, expected)
            milvus.close()
        finally:
            server.stop()
    result = {
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "command": "bench/milvus_space.py",
        "data": f"dev near_duplicate: {embedded.count()} images, {len(names)} queries, one view each, k={K}",
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    sys.stdout.write(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
