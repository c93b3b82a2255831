"""The embedded store from 25k to 1M images: build, memory, disk, latency, recall, reopen.

Data sets, each in 256 dimensions (the default `search_dims`), L2-normalised:
- `tight` and `overlapping`: a synthetic mixture of 1,000 Gaussians, spread 0.8 (tight clusters)
  and 2.0 (clusters that overlap, far harder for an approximate index); queries are 500 fresh
  draws from the same mixture (not stored points);
- `real`: real image embeddings, the dev benchmark's photos under seeded edits, whitened
  (`bench/real_embeddings.py`, built once and cached; rows only up to the cached size).
Recall@10 is measured against exact search on the same vectors. For each N a child process builds the
store the way `imagefinder index` does (upserts in batches of 2,000 with payloads, then
`optimise()`), and a second child reopens it and measures, so memory is that of a process which
only opened the store (RSS after open minus RSS before). Rows:

- `embedded`: `EmbeddedStore`, the full search path (filter lookup, IVF-SQ8 scan, exact re-score
  of the candidates from SQLite, ids and payloads). `filtered_p50_ms`: with a filter matching 10%.
- `exact-numpy`: the same vectors scanned exactly with one matrix product (the old default).
- `milvus`: the same vectors in `MilvusStore` on a real Milvus server (the `milvus` PyPI package,
  standalone) at `--milvus-size` (100k): build includes waiting for Milvus's HNSW build; memory is
  the server process's RSS growth. `scan_rows_per_s_*`: the duplicates scan's `similar` over
  2,000 stored rows, batched into requests against one request per row.

usage: python bench/index.py [--sizes 25000,...,1000000] [--data tight,overlapping,real]
                             [--out bench/results/index.json] [--merge]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.live import percentile  # noqa: E402  (the same helper the tests use)

DIM = 256
CLUSTERS = 1000
QUERIES = 500
SCAN_ROWS = 2000  # rows of the Milvus duplicates-scan measurement


SPREADS = {"tight": 0.8, "overlapping": 2.0}
DATA = "tight"  # the data set of this process; set from --data
SPREAD = 0.8  # per-dimension noise around each centre, of the synthetic sets


def base_vectors(n: int) -> np.ndarray:
    if DATA == "real":
        return real_set(n)[0]
    return mixture(n, seed=1)


def query_vectors(n: int) -> np.ndarray:
    if DATA == "real":
        return real_set(n)[1]
    return mixture(QUERIES, seed=2)


def real_set(n: int) -> tuple[np.ndarray, np.ndarray]:
    from bench.real_embeddings import load

    loaded = load(n)
    if loaded is None:
        raise SystemExit(f"no cached real embeddings for n={n}: python bench/real_embeddings.py --n {n}")
    return loaded


def describe(data: str) -> str:
    if data == "real":
        return "real: dev benchmark photos under seeded edits, embedded and whitened to 256-d"
    return f"{data}: mixture of {CLUSTERS} Gaussians, spread {SPREADS[data]}"


def mixture(n: int, seed: int) -> np.ndarray:
    """n points of a fixed mixture of Gaussians (centres from seed 0), in chunks."""
    centres = np.random.default_rng(0).standard_normal((CLUSTERS, DIM)).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        labels = rng.integers(0, CLUSTERS, stop - start)
        out[start:stop] = centres[labels] + SPREAD * rng.standard_normal((stop - start, DIM)).astype(
            np.float32
        )
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def fill(store: Any, vectors: np.ndarray) -> None:
    """Upsert the vectors in batches of 2,000 with payloads, as `imagefinder index` writes."""
    for start in range(0, len(vectors), 2000):
        stop = min(len(vectors), start + 2000)
        ids = [f"img{i:07d}" for i in range(start, stop)]
        payloads = [{"uri": f"/photos/{i}.jpg", "source": f"s{int(i[3:]) % 10}"} for i in ids]
        store.upsert(ids, vectors[start:stop], payloads)


def timed_searches(
    store: Any, queries: np.ndarray, where: dict[str, str] | None = None
) -> tuple[list[float], list[list[int]]]:
    """Per-query latency (ms) of k=10 searches, and the row numbers each found."""
    latencies, found = [], []
    for query in queries:
        t = time.perf_counter()
        hits = store.search(query, k=10, where=where)
        latencies.append((time.perf_counter() - t) * 1000)
        if where:
            assert len(hits) == 10 and all(h.payload["source"] == where["source"] for h in hits)
        found.append([int(h.id[3:]) for h in hits])
    return latencies, found


def exact_top10(vectors: np.ndarray, queries: np.ndarray) -> list[list[int]]:
    """Ground truth: the 10 nearest rows of each query by an exact scan."""
    import faiss

    exact = faiss.IndexFlatIP(DIM)
    exact.add(vectors)
    _, truth = exact.search(queries, 10)
    return [list(row) for row in truth.tolist()]


def recall_at_10(found: list[list[int]], truth: list[list[int]]) -> float:
    pairs = zip(found, truth, strict=False)
    return round(float(np.mean([len(set(f) & set(t)) / 10 for f, t in pairs])), 4)


def store_figures(
    n: int, memory: float, disk: float, latencies: list[float], filtered: list[float], recall: float
) -> dict[str, Any]:
    """The figures every backend's row reports, in the same units for both."""
    return {
        "bytes_per_vector": round(memory / n, 1),
        "disk_bytes_per_vector": round(disk / n, 1),
        "p50_ms": round(percentile(latencies, 0.5), 3),
        "p99_ms": round(percentile(latencies, 0.99), 3),
        "qps": round(1000 / (sum(latencies) / len(latencies)), 1),
        "filtered_p50_ms": round(percentile(filtered, 0.5), 3),
        "recall_at_10": recall,
    }


def build(path: Path, n: int) -> dict[str, Any]:
    from imagefinder.encoders.base import EncoderInfo
    from imagefinder.stores.embedded import EmbeddedStore

    vectors = base_vectors(n)
    started = time.perf_counter()
    store = EmbeddedStore(path)
    store.bind_encoder(EncoderInfo("synthetic", "1", DIM, "none"))
    fill(store, vectors)
    store.optimise()
    build_s = time.perf_counter() - started
    store.close()
    return {"build_s": round(build_s, 1)}


def measure(path: Path, n: int) -> dict[str, Any]:

    from imagefinder.stores.embedded import EmbeddedStore

    before = rss_bytes()
    started = time.perf_counter()
    store = EmbeddedStore(path)
    count = store.count()
    reopen_s = time.perf_counter() - started
    memory = rss_bytes() - before
    assert count == n, (count, n)
    stats = store.index_stats()

    queries = query_vectors(n)
    latencies, found = timed_searches(store, queries)
    filtered, _ = timed_searches(store, queries[:200], where={"source": "s3"})
    store.close()
    # Recall is a setting: the same index reopened with other nprobe values.
    sweep_found: dict[int, list[list[int]]] = {}
    sweep_latency: dict[int, list[float]] = {}
    for nprobe in (8, 16, 64, 128):
        swept = EmbeddedStore(path, nprobe=nprobe)
        sweep_latency[nprobe], sweep_found[nprobe] = timed_searches(swept, queries[:200])
        swept.close()

    # Ground truth and the exact-scan baseline on the same vectors.
    vectors = base_vectors(n)
    truth = exact_top10(vectors, queries)
    recall = recall_at_10(found, truth)
    sweep = [
        {
            "nprobe": stats.get("nprobe"),
            "p50_ms": round(percentile(latencies, 0.5), 3),
            "recall_at_10": recall,
        }
    ]
    sweep += [
        {
            "nprobe": p,
            "p50_ms": round(percentile(sweep_latency[p], 0.5), 3),
            "recall_at_10": recall_at_10(sweep_found[p], truth),
        }
        for p in sweep_found
    ]
    exact_latency = []
    for query in queries[:100]:
        t = time.perf_counter()
        scores = vectors @ query
        np.argpartition(-scores, 10)[:10]
        exact_latency.append((time.perf_counter() - t) * 1000)
    disk = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    common = {
        "n": n,
        "dim": DIM,
        "queries": QUERIES,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    return {
        "embedded": {
            **common,
            "store": "embedded",
            "index": f"IVF{stats.get('nlist')},SQ8 nprobe {stats.get('nprobe')} + exact re-score",
            **store_figures(n, memory, disk, latencies, filtered, recall),
            "nprobe_sweep": sorted(sweep, key=lambda row: row["nprobe"] or 0),
            "reopen_s": round(reopen_s, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        },
        "exact-numpy": {
            **common,
            "store": "exact-numpy",
            "index": "float32 matrix, one matrix-vector product",
            "bytes_per_vector": DIM * 4,
            "p50_ms": round(percentile(exact_latency, 0.5), 3),
            "p99_ms": round(percentile(exact_latency, 0.99), 3),
            "qps": round(1000 / (sum(exact_latency) / len(exact_latency)), 1),
            "recall_at_10": 1.0,
        },
    }


def milvus_row(n: int) -> dict[str, Any]:
    """The Milvus backend at n: a real Milvus server (the `milvus` PyPI package) in a temporary
    folder, the same vectors through `MilvusStore`, measured like the embedded store."""
    from milvus import MilvusServer

    from imagefinder.encoders.base import EncoderInfo
    from imagefinder.stores.milvus import INDEX_PARAMS, MilvusStore

    base = Path(tempfile.mkdtemp(prefix="bench-milvus-"))
    server = MilvusServer()
    server.set_base_dir(str(base))
    server.start()
    address = f"http://127.0.0.1:{server.listen_port}"
    try:
        pid = server.server_proc.pid
        rss_before = process_rss(pid)
        vectors = base_vectors(n)
        started = time.perf_counter()
        store = MilvusStore(address, "bench")
        store.bind_encoder(EncoderInfo("synthetic", "1", DIM, "none"))
        fill(store, vectors)
        # Seal the segments and wait until Milvus has built HNSW on every row.
        client = store._client  # noqa: SLF001  (benchmark-only: waiting on the server's index build)
        client.flush("bench")
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            described = client.describe_index("bench", "vector")
            if (
                int(described.get("indexed_rows", 0)) >= n
                and int(described.get("pending_index_rows", 0)) == 0
            ):
                break
            time.sleep(2)
        build_s = time.perf_counter() - started
        store.close()

        t = time.perf_counter()
        store = MilvusStore(address, "bench")
        count = store.count()
        reopen_s = time.perf_counter() - t
        assert count == n, (count, n)
        queries = query_vectors(n)
        latencies, found = timed_searches(store, queries)
        filtered, _ = timed_searches(store, queries[:100], where={"source": "s3"})
        memory = process_rss(pid) - rss_before
        scan = similar_rates(store, vectors[:SCAN_ROWS])
        store.close()
    finally:
        server.stop()
        disk = sum(f.stat().st_size for f in base.rglob("*") if f.is_file())
        shutil.rmtree(base, ignore_errors=True)
    recall = recall_at_10(found, exact_top10(vectors, queries))
    return {
        "store": "milvus",
        "index": f"Milvus 2.3.5 standalone, HNSW M={INDEX_PARAMS['M']} "
        f"efConstruction={INDEX_PARAMS['efConstruction']}, ef=256, Session consistency",
        "n": n,
        "dim": DIM,
        "queries": QUERIES,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "build_s": round(build_s, 1),
        **store_figures(n, memory, disk, latencies, filtered, recall),
        "reopen_s": round(reopen_s, 2),
        **scan,
    }


def similar_rates(store: Any, rows: np.ndarray) -> dict[str, Any]:
    """Rows per second of `similar` with the duplicates scan's k (its neighbours and the image
    itself), asked all at once (the store batches them into requests) and one row per call (one
    request each, as before batching), and the share of rows given the same neighbours by both."""
    from imagefinder.duplicates import NEIGHBOURS

    k = NEIGHBOURS + 1
    t = time.perf_counter()
    batched = store.similar(rows, k, -1.0)
    batched_s = time.perf_counter() - t
    t = time.perf_counter()
    single = [store.similar(row[None, :], k, -1.0)[0] for row in rows]
    single_s = time.perf_counter() - t
    same = np.mean([[h.id for h in a] == [h.id for h in b] for a, b in zip(batched, single, strict=True)])
    return {
        "scan_rows": len(rows),
        "scan_rows_per_s_batched": round(len(rows) / batched_s, 1),
        "scan_rows_per_s_one_per_request": round(len(rows) / single_s, 1),
        "scan_same_neighbours": round(float(same), 4),
    }


def process_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def child(step: str, path: Path, n: int, data: str) -> dict[str, Any]:
    """Run one step in a fresh interpreter: memory and reopen time are not polluted by the build."""
    output = subprocess.run(
        [sys.executable, __file__, "--child", step, "--path", str(path), "--sizes", str(n), "--data", data],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="25000,50000,100000,300000,1000000")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--data",
        default="tight,overlapping,real",
        help="data sets, one run each: tight, overlapping (synthetic), real (cached embeddings)",
    )
    parser.add_argument(
        "--milvus-size", type=int, default=100_000, help="N for the Milvus backend row (0: leave it out)"
    )
    parser.add_argument(
        "--update-milvus", action="store_true", help="Only the Milvus rows, replacing those in --out"
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="Keep the rows of --out that this run does not measure (other data sets or sizes)",
    )
    parser.add_argument("--child")
    parser.add_argument("--path", type=Path)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    global DATA, SPREAD
    if args.child:
        DATA = args.data
        SPREAD = SPREADS.get(DATA, SPREAD)
        if args.child == "milvus":
            result = milvus_row(sizes[0])
        else:
            result = build(args.path, sizes[0]) if args.child == "build" else measure(args.path, sizes[0])
        print(json.dumps(result))  # noqa: T201  (read by the parent process)
        return

    from bench.real_embeddings import load

    rows: list[dict[str, Any]] = []
    if args.update_milvus and args.out:
        rows = [row for row in json.loads(args.out.read_text()) if row["store"] != "milvus"]
    for data in args.data.split(",") if not args.update_milvus else []:
        for n in sizes:
            if data == "real" and load(n) is None:
                note = f"real n={n}: not in the cache (bench/real_embeddings.py --n {n}); left out"
                print(note, flush=True)  # noqa: T201
                continue
            directory = Path(tempfile.mkdtemp(prefix=f"bench-index-{n}-"))
            try:
                built = child("build", directory, n, data)
                measured = child("measure", directory, n, data)
            finally:
                shutil.rmtree(directory, ignore_errors=True)
            measured["embedded"]["build_s"] = built["build_s"]
            rows += [measured["embedded"], measured["exact-numpy"]]
            for row in rows[-2:]:
                row["data"] = describe(data)
                line = (
                    f"{row['store']:>12} {data:>11} n={n:>8}  build {row.get('build_s', '-'):>6} s  "
                    f"{row['bytes_per_vector']:>7} B/vec  p50 {row['p50_ms']:>7} ms  "
                    f"p99 {row['p99_ms']:>7} ms  {row['qps']:>8} q/s  recall@10 {row['recall_at_10']}  "
                    f"reopen {row.get('reopen_s', '-')} s  filtered p50 {row.get('filtered_p50_ms', '-')} ms"
                )
                print(line, flush=True)  # noqa: T201
    if args.milvus_size:
        for data in args.data.split(","):
            if data == "real" and load(args.milvus_size) is None:
                continue
            row = child("milvus", Path("-"), args.milvus_size, data)
            row["data"] = describe(data)
            rows.append(row)
            print(  # noqa: T201
                f"      milvus {data:>11} n={row['n']:>8}  build {row['build_s']:>6} s  "
                f"{row['bytes_per_vector']:>7} B/vec  p50 {row['p50_ms']:>7} ms  p99 {row['p99_ms']:>7} ms  "
                f"{row['qps']:>8} q/s  recall@10 {row['recall_at_10']}  reopen {row['reopen_s']} s  "
                f"filtered p50 {row['filtered_p50_ms']} ms  scan rows/s {row['scan_rows_per_s_batched']} "
                f"batched, {row['scan_rows_per_s_one_per_request']} one per request",
                flush=True,
            )
    if args.out:
        if args.merge and args.out.exists():
            rows = merged(json.loads(args.out.read_text()), rows)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


def merged(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`old` with the rows measured again replaced in place (same store, data set and N), and
    the rows it did not have put after the last old row of their store and data set."""

    def key(row: dict[str, Any]) -> tuple[str, str, int]:
        return row["store"], row["data"], row["n"]

    fresh = {key(row): row for row in new}
    out = [fresh.pop(key(row), row) for row in old]
    for row in new:
        if key(row) not in fresh:
            continue
        same = [i for i, kept in enumerate(out) if kept["data"] == row["data"] and kept["store"] != "milvus"]
        out.insert(same[-1] + 1 if same and row["store"] != "milvus" else len(out), row)
    return out


if __name__ == "__main__":
    main()
