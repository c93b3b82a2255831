"""Does the encoder run faster as one session on every core, or as one 1-thread session per core
(lanes) given parts of the batch? Times both, for the int8 and the fp32 default encoder, at batch
sizes 1 to 32, rounds interleaved so that the machine's slow phases hit both alike. Writes
images/s for each (`OnnxEncoder(lanes=1)` is the single session on every core).

usage: python bench/encoder_lanes.py [--out bench/results/encoder_lanes.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from imagefinder.config import Settings
from imagefinder.encoders.lite0 import lite0_encoder
from imagefinder.encoders.onnx_runtime import OnnxEncoder

ROOT = Path(__file__).resolve().parents[1]
BATCHES = (1, 2, 4, 8, 16, 32)


def seconds(encoder: OnnxEncoder, batch: np.ndarray) -> float:
    started = time.perf_counter()
    encoder.embed_arrays(batch)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "encoder_lanes.json")
    parser.add_argument("--images", type=int, default=96, help="Images per configuration and round.")
    args = parser.parse_args()
    models = Settings(home=Path("~/.imagefinder")).model_cache_dir
    cores = os.cpu_count() or 1
    pixels = np.random.default_rng(0).uniform(-1, 1, (32, 3, 224, 224)).astype(np.float32)
    result: dict[str, object] = {"machine": {"cpus": cores}}
    for precision, int8 in (("int8", True), ("fp32", False)):
        encoders = {
            "one_session_all_cores": lite0_encoder(models, int8=int8, lanes=1),
            f"{cores}_lanes": lite0_encoder(models, int8=int8, lanes=cores),
        }
        table: dict[str, dict[str, float]] = {name: {} for name in encoders}
        for size in BATCHES:
            batch = pixels[:size]
            spent = dict.fromkeys(encoders, 0.0)
            for encoder in encoders.values():
                seconds(encoder, batch)  # warm-up
            for _ in range(3):
                for name, encoder in encoders.items():
                    spent[name] += sum(seconds(encoder, batch) for _ in range(max(1, args.images // size)))
            for name in encoders:
                done = 3 * max(1, args.images // size) * size
                table[name][f"batch_{size}"] = round(done / spent[name], 1)
        result[precision] = {"images_per_s": table}
        print(precision, json.dumps(table))  # noqa: T201
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
