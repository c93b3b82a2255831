"""Does int8 quantisation of the encoder pay on this CPU? Times, side by side on the same inputs:
the fp32 model, its dynamic int8 quantisation (quantize_dynamic) and the static int8 model that
is the default encoder (`ensure_lite0_int8_onnx`), each on a batch of 32 (5 rounds) and on one
image (50 rounds: a query), after a warm-up, rounds interleaved so that the machine's slow phases
hit all three alike. Writes size, images/s and ms per single image.

usage: python bench/int8_quantization.py [--out bench/results/int8_quantization.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic

from imagefinder.encoders.lite0 import ensure_lite0_int8_onnx, ensure_lite0_onnx

ROOT = Path(__file__).resolve().parents[1]


def session(model: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = os.cpu_count() or 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def seconds(model: ort.InferenceSession, batch: np.ndarray, rounds: int) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        model.run(None, {"pixels": batch})
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "int8_quantization.json")
    args = parser.parse_args()
    fp32 = ensure_lite0_onnx(Path("~/.imagefinder/models").expanduser())
    batch = np.random.default_rng(0).uniform(-1, 1, (32, 3, 224, 224)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        dynamic = Path(tmp) / "int8_dynamic.onnx"
        quantize_dynamic(str(fp32), str(dynamic), weight_type=QuantType.QInt8)
        models = {"fp32": fp32, "int8_dynamic": dynamic, "int8_static": ensure_lite0_int8_onnx(fp32.parent)}
        sessions = {name: session(path) for name, path in models.items()}
        batch_s = dict.fromkeys(models, 0.0)
        single_s = dict.fromkeys(models, 0.0)
        for model in sessions.values():  # warm-up
            seconds(model, batch, 1)
        for _ in range(5):
            for name, model in sessions.items():
                batch_s[name] += seconds(model, batch, 1)
                single_s[name] += seconds(model, batch[:1], 10)
        result: dict[str, object] = {
            name: {
                "mb": round(path.stat().st_size / 1e6, 1),
                "images_per_s": round(5 * len(batch) / batch_s[name], 1),
                "single_image_ms": round(1000 * single_s[name] / 50, 2),
            }
            for name, path in models.items()
        }
        result["machine"] = {"processor": platform.machine(), "cpus": os.cpu_count()}
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))  # noqa: T201


if __name__ == "__main__":
    main()
