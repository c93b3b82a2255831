"""Milvus's HNSW graph size (M) against recall: the overlapping synthetic set of `bench/index.py`
at 100k, each M built twice (Milvus's graphs differ between builds), each build searched at
ef 128, 256 and 512 through `MilvusStore.search` (k=10), recall@10 against exact search.

usage: python bench/milvus_hnsw.py [--builds 16,32,16,32] [--out bench/results/milvus_hnsw.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import index as bench_index  # noqa: E402  (the index benchmark's data and helpers)

N = 100_000
EFS = (128, 256, 512)


def wait_for_index(client: Any, name: str, n: int) -> None:
    while True:
        described = client.describe_index(name, "vector")
        if int(described.get("indexed_rows", 0)) >= n and int(described.get("pending_index_rows", 0)) == 0:
            return
        time.sleep(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--builds", default="16,32,16,32", help="M of each build, in order")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "milvus_hnsw.json")
    args = parser.parse_args()

    from milvus import MilvusServer

    from imagefinder.encoders.base import EncoderInfo
    from imagefinder.stores.milvus import MilvusStore

    bench_index.DATA, bench_index.SPREAD = "overlapping", bench_index.SPREADS["overlapping"]
    vectors, queries = bench_index.base_vectors(N), bench_index.query_vectors(N)
    truth = bench_index.exact_top10(vectors, queries)
    base = Path(tempfile.mkdtemp(prefix="bench-milvus-hnsw-"))
    server = MilvusServer()
    server.set_base_dir(str(base))
    server.start()
    address = f"http://127.0.0.1:{server.listen_port}"
    rows = []
    try:
        for build, m in enumerate(int(x) for x in args.builds.split(",")):
            name, params = f"hnsw_{build}_m{m}", {"M": m, "efConstruction": 200}
            store = MilvusStore(address, name, index_params=params)
            store.bind_encoder(EncoderInfo("synthetic", "1", bench_index.DIM, "none"))
            bench_index.fill(store, vectors)
            store._client.flush(name)  # noqa: SLF001  (benchmark-only: waiting on the server's build)
            wait_for_index(store._client, name, N)  # noqa: SLF001
            store.close()
            for ef in EFS:
                searcher = MilvusStore(address, name, index_params=params, ef=ef)
                latencies, found = bench_index.timed_searches(searcher, queries)
                searcher.close()
                row = {
                    "build": build,
                    "M": m,
                    "efConstruction": 200,
                    "ef": ef,
                    "recall_at_10": bench_index.recall_at_10(found, truth),
                    "p50_ms": round(float(np.percentile(latencies, 50)), 2),
                }
                rows.append(row)
                print(row, flush=True)  # noqa: T201
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    output = {"data": bench_index.describe("overlapping"), "n": N, "queries": len(queries), "rows": rows}
    args.out.write_text(json.dumps(output, indent=1) + "\n")


if __name__ == "__main__":
    main()
