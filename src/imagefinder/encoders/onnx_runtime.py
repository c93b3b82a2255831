"""Run an exported encoder with ONNX Runtime. The only module that imports onnxruntime."""

from __future__ import annotations

import os
import platform
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from imagefinder.encoders.base import EncoderInfo, RegisteredVersion, l2_normalise

# Models up to this size get one single-threaded session per core ("lanes", see OnnxEncoder);
# each lane holds its own copy of the weights, so larger models keep one session.
LANES_MAX_MODEL_BYTES = 64 * 1024 * 1024
# Images per encoder run on a lane: past about 8, activations fall out of the CPU caches and each
# image takes longer (measured in bench/results/encoder_lanes.json).
LANE_CHUNK = 8


class OnnxEncoder:
    """An `Encoder` whose model is an ONNX file taking (n, 3, h, w) and returning (n, dim).

    ONNX Runtime splits one run over several threads poorly for a small convolutional model: on
    this project's 2-core machine the int8 EfficientNet-Lite0 embeds about 100 images/s with one
    session on 2 threads, and about 240 with two 1-thread sessions each given half the images. So
    a small model gets one 1-thread session per core (lanes), and a batch of several images is
    cut into chunks that the lanes run side by side. A single image (a query's first pass) still
    runs on one session using every core, which is the quicker way for one image."""

    registered: RegisteredVersion | None = None  # set by `tracking` when loaded from the registry
    # A Hugging Face CLIP model exported to ONNX sets its text tower here.
    embed_texts: Callable[[Sequence[str]], NDArray[np.float32]] | None = None

    def __init__(
        self,
        model_path: Path,
        info: EncoderInfo,
        preprocess: Callable[[Image.Image], NDArray[np.float32]],
        min_short_side: int,
        threads: int | None = None,
        lanes: int | None = None,
    ) -> None:
        threads = threads or len(os.sched_getaffinity(0)) or 1  # the cores this process may use
        if lanes is None:
            lanes = threads if model_path.stat().st_size <= LANES_MAX_MODEL_BYTES else 1
        self._wide = _session(model_path, threads)
        self._input = self._wide.get_inputs()[0].name
        # One run at a time on the wide session: ORT sessions are thread-safe, but two concurrent
        # runs on 2 cores just fight over the same threads. (A wide run may overlap lane runs of
        # another caller; that shares the cores but keeps a single query from waiting.)
        self._wide_lock = threading.Lock()
        self._lanes: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(lanes if lanes > 1 else 0):
            self._lanes.put(_session(model_path, 1))
        self._pool = ThreadPoolExecutor(lanes, thread_name_prefix="encoder-lane") if lanes > 1 else None
        self.lanes = lanes
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
        batch = batch.astype(np.float32, copy=False)
        if self._pool is None or batch.shape[0] == 1:
            with self._wide_lock:
                (vectors,) = self._wide.run(None, {self._input: batch})
        else:
            vectors = self._on_lanes(batch, self._on_a_lane)
        return l2_normalise(np.asarray(vectors, dtype=np.float32))

    def embed_images(self, images: Sequence[Image.Image]) -> NDArray[np.float32]:
        """Preprocess and embed a few images (a query's extra views). With lanes, each lane also
        preprocesses its own chunk: Pillow resizes without holding the GIL, so 7 views are
        prepared side by side too."""
        if not images:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        if self._pool is None or len(images) == 1:
            return self.embed_arrays(self._stack(images))
        vectors = self._on_lanes(images, lambda chunk: self._on_a_lane(self._stack(chunk)))
        return l2_normalise(np.asarray(vectors, dtype=np.float32))

    def _stack(self, images: Sequence[Image.Image]) -> NDArray[np.float32]:
        return np.stack([self.preprocess(image) for image in images]).astype(np.float32, copy=False)

    def _on_lanes(
        self, items: Sequence[Any], run: Callable[[Any], NDArray[np.float32]]
    ) -> NDArray[np.float32]:
        """`run` over chunks of at most LANE_CHUNK items, spread evenly over the lanes, side by
        side; the results joined in order."""
        assert self._pool is not None
        size = min(LANE_CHUNK, -(-len(items) // self.lanes))
        chunks = [items[start : start + size] for start in range(0, len(items), size)]
        return np.concatenate(list(self._pool.map(run, chunks)))

    def _on_a_lane(self, chunk: NDArray[np.float32]) -> NDArray[np.float32]:
        # Concurrent callers (the indexer and API queries) share the lanes: each run takes a free
        # session and gives it back.
        session = self._lanes.get()
        try:
            (vectors,) = session.run(None, {self._input: chunk})
        finally:
            self._lanes.put(session)
        return np.asarray(vectors)


def _session(model_path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # By default ORT's threads spin after each run, waiting for the next; on a 2-core machine
    # that steals the CPU from the decoding and preprocessing done between runs. Measured on
    # the dev benchmark: indexing 48 -> 59 images/s, a 3-view query 75 -> 46 ms.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not exact_int8_dot_products():
        # On x86 CPUs without VNNI, ORT's u8s8 kernels add pairs of products in 16 bits, which
        # saturate: the int8 default's vectors then differ from this project's (measured under
        # emulation of such a CPU: bench/results/int8_cpus.json). This option makes ORT use exact
        # (slower) kernels instead; the vectors are then bit-identical to a VNNI CPU's.
        options.add_session_config_entry("session.x64quantprecision", "1")
    return ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])


def exact_int8_dot_products() -> bool:
    """Whether ORT's int8 kernels on this CPU are exact without help: x86 CPUs with AVX-512 VNNI
    (as cpuid reports it, read by numpy: under an emulator this is the emulated CPU, where
    /proc/cpuinfo would be the host's), or CPUs that are not x86. When unsure: no."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True  # the option concerns x86 kernels only
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:
        return False
    return bool(__cpu_features__.get("AVX512VNNI"))
