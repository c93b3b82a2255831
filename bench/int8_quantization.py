"""Does int8 dynamic quantisation of the default encoder pay on this CPU? Quantises the cached
ONNX file with onnxruntime.quantization.quantize_dynamic and times both models side by side on the
same batch of 32 (5 rounds, after a warm-up). Writes size and images/s.

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

from imagefinder.encoders.lite0 import ensure_lite0_onnx

ROOT = Path(__file__).resolve().parents[1]


def images_per_s(model: Path, batch: np.ndarray) -> float:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = os.cpu_count() or 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    session.run(None, {"pixels": batch})
    started = time.perf_counter()
    for _ in range(5):
        session.run(None, {"pixels": batch})
    return round(5 * len(batch) / (time.perf_counter() - started), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "int8_quantization.json")
    args = parser.parse_args()
    fp32 = ensure_lite0_onnx(Path("~/.imagefinder/models").expanduser())
    batch = np.random.default_rng(0).uniform(-1, 1, (32, 3, 224, 224)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        int8 = Path(tmp) / "int8.onnx"
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
        result = {
            "fp32": {"mb": round(fp32.stat().st_size / 1e6, 1), "images_per_s": images_per_s(fp32, batch)},
            "int8_dynamic": {
                "mb": round(int8.stat().st_size / 1e6, 1),
                "images_per_s": images_per_s(int8, batch),
            },
            "machine": {"processor": platform.machine(), "cpus": os.cpu_count()},
        }
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))  # noqa: T201


if __name__ == "__main__":
    main()
