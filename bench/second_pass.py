"""What the second query pass costs a query whose copy is not in the index, with and without the
view gate (`imagefinder.view_gate`), in one run.

The collection is 200 photos of the dev near-duplicate collection (a seeded sample); the queries
are photos of nothing in it: the other 62 dev collection photos (the same kinds of subject) and
the 17 scikit-image photos, each as a 2-megapixel JPEG.

- default encoder, over HTTP: the 200 photos indexed with the CLI as a user would (the gate is
  fitted there), padded with synthetic vectors to --size (100k), served by a real
  `imagefinder serve` on 127.0.0.1. `POST /search?k=10` with views=single, adaptive (gated, the
  default) and thorough (the second pass whenever no copy is found, as before the gate),
  interleaved so every mode meets the same machine; p50/p90/mean per mode, the means' ratio to
  single, and the share of the queries that ran the second pass: over all the queries, and over
  those the first pass leaves unsettled (nothing scores like a copy), the queries the second
  pass is in question for.
- a ViT-B/16-sized Hugging Face model (random weights, built and saved here: speed only, its gate
  learns from random features), in process, on 100 of the 200 photos, the same queries.

Quality with the gate is measured by `make bench-quality` (bench/results/dev_benchmark.json, and
dev_benchmark_thorough.json for the pass without it).

usage: python bench/second_pass.py [--benchmarks ../shared/benchmarks] [--size 100000]
                                   [--rounds 4] [--out bench/results/second_pass.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from imagefinder.config import Settings
from imagefinder.demo import write_demo_collection
from imagefinder.encoders.base import l2_normalise
from imagefinder.service import ImageFinder, QueryViews
from imagefinder.sources import FolderSource
from imagefinder.stores.embedded import EmbeddedStore
from imagefinder.wiring import build_configured_encoder, build_service, service_for

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.live import percentile, serving  # noqa: E402  (the same helpers the tests use)

MODES: tuple[QueryViews, ...] = ("single", "adaptive", "thorough")
TWO_MEGAPIXELS = 2_000_000


COLLECTION = 200


def split(collection: Path, work: Path) -> tuple[Path, list[Path]]:
    """A folder of COLLECTION photos of the dev collection (seeded), and the photos left out."""
    photos = sorted(collection.iterdir())
    chosen = set(random.Random(0).sample(range(len(photos)), COLLECTION))
    folder = work / "collection"
    folder.mkdir()
    for i in sorted(chosen):
        shutil.copyfile(photos[i], folder / photos[i].name)
    return folder, [p for i, p in enumerate(photos) if i not in chosen]


def queries(left_out: list[Path], folder: Path) -> dict[str, bytes]:
    """Photos of nothing in the collection, as 2-megapixel JPEGs."""
    out = {}
    for path in [*left_out, *write_demo_collection(folder)]:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        scale = (TWO_MEGAPIXELS / (image.width * image.height)) ** 0.5
        big = image.resize(
            (round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC
        )
        buffer = io.BytesIO()
        big.save(buffer, "JPEG", quality=90)
        out[path.stem] = buffer.getvalue()
    return out


def second_passes(service: ImageFinder, data: dict[str, bytes]) -> dict[str, dict[str, bool]]:
    """For each query and mode, whether the service ran the second pass (as it tells
    `on_encoder_batch`). A query that runs it in no mode, not even thorough, is one the first
    pass settles: a result scores like a copy."""
    ran: dict[str, dict[str, bool]] = {}
    for name, image in data.items():
        query = service.prepare(image)
        vector = service.embed_prepared([query.pixels])[0]
        ran[name] = {}
        for mode in MODES:
            batches: list[int] = []
            service.search_prepared(query, vector, 10, views=mode, on_encoder_batch=batches.append)
            ran[name][mode] = bool(batches)
    return ran


def rows_of(
    latencies: dict[str, dict[str, list[float]]], decided: dict[str, dict[str, bool]]
) -> dict[str, Any]:
    """Per mode over every query, and over the queries the first pass leaves unsettled (those
    that find nothing like a copy: where the second pass is in question)."""
    unsettled = [name for name, d in decided.items() if d["thorough"]]
    rows: dict[str, Any] = {}
    for subset, names in (("all", list(decided)), ("unsettled", unsettled)):
        if not names:
            continue
        rows[subset] = {
            mode: {
                **summary([t for name in names for t in latencies[mode][name]]),
                "second_pass_share": round(sum(decided[n][mode] for n in names) / len(names), 3),
            }
            for mode in MODES
        }
        rows[subset]["queries"] = len(names)
        rows[subset].update(ratios(rows[subset]))
    return rows


def summary(latencies: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(latencies), 2),
        "p90_ms": round(percentile(latencies, 0.90), 2),
        "mean_ms": round(statistics.fmean(latencies), 2),
    }


def ratios(rows: dict[str, dict[str, Any]]) -> dict[str, float]:
    single = rows["single"]["mean_ms"]
    return {f"{mode}_mean_over_single": round(rows[mode]["mean_ms"] / single, 2) for mode in MODES}


def pad(store: EmbeddedStore, size: int, seed: int = 0) -> int:
    """Synthetic vectors up to `size`: the collection's own vectors, each blurred by noise so
    the padding lies where real images do without copying any."""
    real = store.vectors()
    rng = np.random.default_rng(seed)
    added = 0
    while store.count() < size:
        n = min(10_000, size - store.count())
        base = real[rng.integers(0, len(real), n)]
        noise = rng.normal(0, 1, base.shape).astype(np.float32) * base.std(axis=0) * 1.5
        vectors = l2_normalise((base + noise).astype(np.float32))
        ids = [f"pad-{added + i:07d}" for i in range(n)]
        store.upsert(ids, vectors, [{"uri": f"synthetic://{i}"} for i in ids])
        added += n
    store.optimise()
    return added


def default_encoder_over_http(
    collection: Path, data: dict[str, bytes], size: int, rounds: int, work: Path
) -> dict[str, Any]:
    home = work / "home"
    cached = Path("~/.imagefinder/models").expanduser()
    if cached.is_dir():  # reuse an existing ONNX export rather than exporting again
        shutil.copytree(cached, home / "models")
    env = {**os.environ, "IMAGEFINDER_HOME": str(home), "IMAGEFINDER_TRACKING__ENABLED": "false"}
    cli = [sys.executable, "-m", "imagefinder"]
    started = time.perf_counter()
    subprocess.run([*cli, "index", str(collection), "--quiet"], env=env, check=True, capture_output=True)
    index_s = time.perf_counter() - started
    settings = Settings(home=home)
    store = EmbeddedStore(settings.store_dir)
    padded = pad(store, size)
    store.close()
    service = build_service(settings)
    decided = second_passes(service, data)
    gate = service.store.search_space.describe()["view_gate"]
    images = service.count()
    service.close()

    latencies: dict[str, dict[str, list[float]]] = {mode: {name: [] for name in data} for mode in MODES}
    with serving(env) as base, httpx.Client(timeout=60) as client:
        for name, image in data.items():  # warm-up
            for mode in MODES:
                client.post(
                    f"{base}/search?k=10&views={mode}", files={"file": (name, image)}
                ).raise_for_status()
        for _ in range(rounds):
            for name, image in data.items():
                for mode in MODES:
                    started = time.perf_counter()
                    response = client.post(f"{base}/search?k=10&views={mode}", files={"file": (name, image)})
                    latencies[mode][name].append((time.perf_counter() - started) * 1000)
                    response.raise_for_status()
    return {
        "encoder": settings.encoder,
        "index_images": images,
        "padded_with_synthetic": padded,
        "collection_index_s": round(index_s, 1),
        "view_gate": gate,
        "rounds": rounds,
        **rows_of(latencies, decided),
    }


def vit_b16(folder: Path) -> Path:
    """A ViT-B/16 of the reference design's size (12 layers, 768 wide, 16-px patches, 224 px)
    with random weights, saved as a Hugging Face model folder."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    ViTModel(ViTConfig(), add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(folder)
    return folder


def heavy_encoder_in_process(
    collection: Path, data: dict[str, bytes], rounds: int, work: Path, photos: int
) -> dict[str, Any]:
    folder = work / "photos"
    folder.mkdir()
    for path in sorted(collection.iterdir())[:photos]:  # `collection` is the sampled folder
        shutil.copyfile(path, folder / path.name)
    model = vit_b16(work / "vit-b16")
    settings = Settings(home=work / "vit-home", encoder=f"hf:{model}", device="cpu")
    encoder = build_configured_encoder(settings)
    service = service_for(settings, encoder, EmbeddedStore(work / "vit-index"))
    started = time.perf_counter()
    service.index(FolderSource(folder, 10**8))
    index_and_gate_s = time.perf_counter() - started
    decided = second_passes(service, data)
    latencies: dict[str, dict[str, list[float]]] = {mode: {name: [] for name in data} for mode in MODES}
    for _ in range(rounds):
        for name, image in data.items():
            for mode in MODES:
                started = time.perf_counter()
                service.search_bytes(image, k=10, views=mode)
                latencies[mode][name].append((time.perf_counter() - started) * 1000)
    result = {
        "encoder": "hf: ViT-B/16 (random weights, speed only)",
        "index_images": service.count(),
        "index_and_gate_fit_s": round(index_and_gate_s, 1),
        "view_gate": service.store.search_space.describe()["view_gate"],
        "rounds": rounds,
        **rows_of(latencies, decided),
    }
    service.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--benchmarks", type=Path, default=ROOT.parent / "shared" / "benchmarks")
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--vit-rounds", type=int, default=1)
    parser.add_argument("--vit-photos", type=int, default=100)
    parser.add_argument("--parts", default="default,vit")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "second_pass.json")
    args = parser.parse_args()
    collection = args.benchmarks / "near_duplicate" / "collection"
    if not collection.is_dir():
        raise SystemExit(f"the dev benchmark is not at {args.benchmarks} (see --benchmarks)")
    result: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "processor": platform.machine(),
            "cpus": os.cpu_count(),
        },
        "command": " ".join(["bench/second_pass.py", *sys.argv[1:]]),
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sample, left_out = split(collection, work)
        data = queries(left_out, work / "queries")
        if "default" in args.parts:
            result["default_encoder_http"] = default_encoder_over_http(
                sample, data, args.size, args.rounds, work
            )
            print(json.dumps(result["default_encoder_http"], indent=1), flush=True)  # noqa: T201
        if "vit" in args.parts:
            result["vit_b16_in_process"] = heavy_encoder_in_process(
                sample, data, args.vit_rounds, work, args.vit_photos
            )
            print(json.dumps(result["vit_b16_in_process"], indent=1), flush=True)  # noqa: T201
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
