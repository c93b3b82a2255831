"""Run an exported encoder with ONNX Runtime. The only module that imports onnxruntime."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from imagefinder.encoders.base import EncoderInfo, l2_normalise


class OnnxEncoder:
    """An `Encoder` whose model is an ONNX file taking (n, 3, h, w) and returning (n, dim)."""

    def __init__(
        self,
        model_path: Path,
        info: EncoderInfo,
        preprocess: Callable[[Image.Image], NDArray[np.float32]],
        min_short_side: int,
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        # By default ORT's threads spin after each run, waiting for the next; on a 2-core machine
        # that steals the CPU from the decoding and preprocessing done between runs. Measured on
        # the dev benchmark: indexing 48 -> 59 images/s, a 3-view query 75 -> 46 ms.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        # One run at a time: ORT sessions are thread-safe, but two concurrent runs on 2 cores
        # just fight over the same threads.
        self._lock = threading.Lock()
        self._preprocess = preprocess
        self.info = info
        self.min_short_side = min_short_side
        self.model_path = model_path
        # How to rebuild this encoder from the ONNX file (see encoders.pyfunc); set by builders.
        self.spec: dict[str, object] | None = None

    def preprocess(self, image: Image.Image) -> NDArray[np.float32]:
        return self._preprocess(image)

    def embed_arrays(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        if batch.shape[0] == 0:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        with self._lock:
            (vectors,) = self._session.run(None, {self._input: batch.astype(np.float32, copy=False)})
        return l2_normalise(np.asarray(vectors, dtype=np.float32))
