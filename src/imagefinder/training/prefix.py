"""The frozen early stages run by ONNX Runtime while the later stages train in torch.

Every training view passes through the frozen stem and early blocks, and eager torch runs those
about three times slower on a CPU than ONNX Runtime does (`bench/results/finetune.json`), so on a
CPU they are exported once per training run and run by a session; on a GPU torch runs them.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from imagefinder.encoders.efficientnet_lite import export_graph
from imagefinder.training.stages import TrainedStages, frozen_stages
from imagefinder.training.trainer import FrozenPrefix


class _Frozen(torch.nn.Module):
    def __init__(self, stages: TrainedStages) -> None:
        super().__init__()
        self.trunk = stages.trunk
        self.train_from = stages.train_from

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return frozen_stages(self.trunk, self.train_from, pixels)


def onnx_prefix(
    stages: TrainedStages, image_size: int, path: Path, threads: int | None = None
) -> FrozenPrefix:
    """Export the frozen stages to `path` and return a function running them."""
    import onnxruntime as ort

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # shape arithmetic traced as constants: intended
        export_graph(_Frozen(stages).eval(), path, image_size, "features")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(pixels: NDArray[np.float32]) -> NDArray[np.float32]:
        (features,) = session.run(None, {"pixels": np.ascontiguousarray(pixels, dtype=np.float32)})
        return features  # type: ignore[no-any-return]

    return run
