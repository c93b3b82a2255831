"""Where a query's time goes, in-process, for 2-megapixel JPEGs: decode, preprocess, encoder,
index search; the stages of the adaptive second pass (7 more views, run when the first pass finds
no copy), with the index search also at 100k vectors; and how steady the encoder's time is on this
machine.

The encoder is timed second by second for `--seconds` with ONNX Runtime on 1 and on 2 intra-op
threads, alternating, because on this 2-vCPU virtual machine a 2-thread run is sometimes 2.4x
slower for seconds at a time (no steal time is reported); that, not the code, is why POST /search
p50 moves between runs of `make bench`.

usage: python bench/search_breakdown.py [--out bench/results/search_breakdown.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from speed import make_photos, random_store, two_megapixel_queries  # noqa: E402

from imagefinder.config import Settings  # noqa: E402
from imagefinder.encoders.lite0 import lite0_encoder  # noqa: E402
from imagefinder.images import decode_image  # noqa: E402
from imagefinder.sources import FolderSource  # noqa: E402
from imagefinder.stores.embedded import EmbeddedStore  # noqa: E402
from imagefinder.threads import single_threaded_blas  # noqa: E402
from imagefinder.views import extra_views  # noqa: E402
from imagefinder.wiring import service_for  # noqa: E402


def median_ms(run: Callable[[int], object], n: int = 200) -> float:
    times = []
    for i in range(n):
        started = time.perf_counter()
        run(i)
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "search_breakdown.json")
    args = parser.parse_args()
    single_threaded_blas()  # as the CLI and the server run
    models = Settings(home=Path("~/.imagefinder")).model_cache_dir
    encoders = {threads: lite0_encoder(models, threads=threads) for threads in (1, 2)}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_photos(work / "photos", 20, seed=5)
        queries = two_megapixel_queries(work / "photos")
        settings = Settings(home=work / "home", query_views="single")
        service = service_for(settings, encoders[2], EmbeddedStore(settings.store_dir))
        service.index(FolderSource(work / "photos", settings.images.max_bytes))
        q = [service.prepare(data) for data in queries]
        vector = service.embed_prepared([q[0].pixels])[0]
        stages = {
            "decode": median_ms(lambda i: decode_image(queries[i % 20], service.limits, "q", 256)),
            "decode_and_preprocess": median_ms(lambda i: service.prepare(queries[i % 20])),
            "encoder_2_threads": median_ms(lambda i: encoders[2].embed_arrays(q[i % 20].pixels)),
            "index_search_k3": median_ms(lambda i: service.search_vector(vector, 3)),
            "whole_query": median_ms(lambda i: service.search_bytes(queries[i % 20], 3)),
        }
        # The adaptive second pass, stage by stage.
        encoder = encoders[2]
        views = [[view for view, _ in extra_views(prepared.image)] for prepared in q]
        penalties = np.array([0.0] + [p for _, p in extra_views(q[0].image)], dtype=np.float32)
        view_pixels = [np.stack([encoder.preprocess(view) for view in some]) for some in views]
        view_vectors = np.concatenate([vector[None], encoder.embed_arrays(view_pixels[0])])
        stages.update(
            {
                "second_pass_make_7_views": median_ms(lambda i: extra_views(q[i % 20].image)),
                "second_pass_preprocess_7_views": median_ms(
                    lambda i: [encoder.preprocess(view) for view in views[i % 20]]
                ),
                "second_pass_encoder_7_views": median_ms(
                    lambda i: encoder.embed_arrays(view_pixels[i % 20]), 50
                ),
                # What the service runs: preprocessing spread over the encoder's lanes too.
                "second_pass_preprocess_and_encoder_7_views": median_ms(
                    lambda i: encoder.embed_images(views[i % 20]), 50
                ),
                "index_search_8_views_k3": median_ms(
                    lambda i: service.store.search(view_vectors, 3, penalties)
                ),
            }
        )
        service.close()
        # The index searches at 100k vectors (random unit vectors, whitened to 256 dims and
        # searched through the approximate index, as `make bench` builds them).
        big_settings = Settings(home=work / "big", query_views="single")
        big = random_store(big_settings.store_dir, encoder.info)
        service_for(big_settings, encoder, big).maintenance.refit(force=True)
        big.optimise()
        stages["index_search_k3_at_100k"] = median_ms(lambda i: big.search(vector, 3))
        stages["index_search_8_views_k3_at_100k"] = median_ms(
            lambda i: big.search(view_vectors, 3, penalties)
        )
        big.close()
    per_second: dict[int, list[float]] = {1: [], 2: []}
    pixels = q[0].pixels
    for second in range(args.seconds):
        threads = 1 + second % 2
        times, end = [], time.monotonic() + 1
        while time.monotonic() < end:
            started = time.perf_counter()
            encoders[threads].embed_arrays(pixels)
            times.append((time.perf_counter() - started) * 1000)
        per_second[threads].append(round(statistics.median(times), 1))
    result = {
        "stages_median_ms": stages,
        "encoder_ms_per_second": {f"{t}_threads": v for t, v in per_second.items()},
        "encoder_ms_median": {f"{t}_threads": statistics.median(v) for t, v in per_second.items()},
        "machine": {"cpus": __import__("os").cpu_count()},
    }
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["stages_median_ms"]), json.dumps(result["encoder_ms_median"]))  # noqa: T201
    print(json.dumps(result["encoder_ms_per_second"]))  # noqa: T201


if __name__ == "__main__":
    main()
