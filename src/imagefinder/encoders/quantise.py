"""Static int8 quantisation of an exported ONNX encoder, with ONNX Runtime's own tools.

Static (not dynamic) because the ranges of the activations are measured once on calibration
images, so the model runs int8 convolutions end to end (QLinearConv on VNNI-capable CPUs).
Dynamic quantisation measures them at every run, and on this project's 2-core machine ran the
encoder 5x slower than fp32 (bench/results/int8_quantization.json). Only this module imports
onnxruntime.quantization.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray


def quantise_static(
    fp32: Path, target: Path, input_name: str, calibration: Sequence[NDArray[np.float32]]
) -> None:
    """Write an int8 copy of the ONNX model `fp32` to `target`: weights per output channel,
    activations with MinMax ranges over the `calibration` images ((3, h, w) arrays, preprocessed
    as the encoder's input). MinMax keeps the quantisation deterministic; percentile and entropy
    calibration scored no better on the dev benchmark (see docs/quality.md, "Encoder precision")."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._left = iter(calibration)

        def get_next(self) -> dict[str, NDArray[np.float32]] | None:
            pixels = next(self._left, None)
            return None if pixels is None else {input_name: pixels[None]}

    with tempfile.TemporaryDirectory() as work:
        prepared = Path(work) / "prepared.onnx"
        # Shape inference and graph folding first, as ORT's quantisation guide advises.
        quant_pre_process(str(fp32), str(prepared))
        quantize_static(
            str(prepared),
            str(target),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
