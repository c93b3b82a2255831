"""Keeping an index fit to search: its search space (the whitening learned from the collection, the
copy threshold calibrated in it, the gate of the second query pass) and its provenance (the MLflow
run and registered model version that built it).
"""

from __future__ import annotations

import functools
import json
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from imagefinder.calibration import calibrate
from imagefinder.encoders.base import Encoder, embed_images
from imagefinder.errors import (
    EncoderMismatchError,
    FetchError,
    ImageError,
    SearchSpaceChangedError,
    SourceError,
)
from imagefinder.search_space import Projection, SearchSpace
from imagefinder.stores.base import VectorStore
from imagefinder.tracking import ModelRecord
from imagefinder.view_gate import MIN_IMAGES, SAMPLE, ViewGate, encoder_key, fit_view_gate
from imagefinder.whitening import DEFAULT_DIMS, DEFAULT_POWER, REGULARISATION, fit_whitening

if TYPE_CHECKING:  # training.data imports the evaluation runner, which imports the service
    from imagefinder.training.data import ImageReader

# Up to this size the whitening is learned again after every index run (seconds at most);
# beyond it, only when the collection has grown or shrunk by a quarter since the last fit, since
# a new projection means re-projecting and re-indexing every stored vector. The fit and the copy
# threshold use a random sample of this many vectors.
REFIT_ALWAYS_UP_TO = 50_000
FIT_SAMPLE = 50_000
# The view gate's images: at most this many are tried to find SAMPLE readable ones, within this
# many seconds (a collection of URLs whose hosts are down); and where a failed attempt is noted.
GATE_TRIES = 2 * SAMPLE
GATE_READ_S = 120.0
GATE_TRIED_KEY = "view_gate_tried"
# Tries of a change to the search space that another process keeps changing meanwhile.
SPACE_TRIES = 5
# What an index records about the model and the MLflow run that built it (see record_provenance).
PROVENANCE_KEYS = ("model_uri", "model_registry_version", "model_sha256", "index_run_id")


class Maintenance:
    def __init__(
        self,
        encoder: Encoder,
        store: VectorStore,
        whitening: float = DEFAULT_POWER,
        search_dims: int = DEFAULT_DIMS,
        reader: ImageReader | None = None,
    ) -> None:
        self.encoder = encoder
        self.store = store
        self._whitening = whitening
        self._search_dims = search_dims
        self._reader = reader  # reads images again for the view gate; None: no gate is fitted

    def refit(self, force: bool = False) -> None:
        """Learn the whitening from the collection as it is now (see REFIT_ALWAYS_UP_TO), then the
        copy threshold in the whitened space, and the view gate when the space has none for this
        encoder, and make them the store's search space. After each index run; single API adds
        use the current fit."""
        n = self.store.count()
        # A changed setting (or way of fitting) refits a large collection too, not only drift.
        fitted_with = f"power={self._whitening} dims={self._search_dims} regularisation={REGULARISATION}"
        sample = self.store.vectors(limit=FIT_SAMPLE)

        @functools.cache  # learned once, however often another process makes the change start over
        def projection() -> Projection | None:
            return fit_whitening(sample, self._whitening, self._search_dims)

        def refitted(space: SearchSpace) -> SearchSpace:
            drifted = not (space.fitted_on / 1.25 <= n <= space.fitted_on * 1.25)
            if force or n <= REFIT_ALWAYS_UP_TO or drifted or space.fitted_with != fitted_with:
                space = space.fitted(projection(), n, fitted_with)
            return self._calibrated(space, sample)

        space = self._update(refitted)  # kept even if the gate's fit below fails
        gate = self._new_view_gate(space, n, force)
        if gate is not None:
            self._update(lambda current: current.with_view_gate(gate))

    def calibrate(self) -> float:
        """Recompute the "is this a copy?" threshold from the collection (see `calibration`)."""
        sample = self.store.vectors(limit=FIT_SAMPLE)
        return self._update(lambda space: self._calibrated(space, sample)).copy_threshold

    def _update(self, change: Callable[[SearchSpace], SearchSpace]) -> SearchSpace:
        """Write `change` of the store's search space. When another process changes the space
        meanwhile (a refit during a calibration), `change` is made again on the space it wrote,
        so neither undoes the other (a calibration would otherwise put back the old projection)."""
        for _ in range(SPACE_TRIES):
            space = self.store.search_space
            changed = change(space)
            try:
                self.store.set_search_space(changed, replacing=space.version)
            except SearchSpaceChangedError:
                continue
            return changed
        raise SearchSpaceChangedError(
            f"the search space changed {SPACE_TRIES} times while this change was computed: try again"
        )

    def _calibrated(self, space: SearchSpace, sample: NDArray[np.float32]) -> SearchSpace:
        fit = None
        if space.projection is not None:

            def fit(vectors: NDArray[np.float32]) -> Callable[[NDArray[np.float32]], NDArray[np.float32]]:
                return SearchSpace(fit_whitening(vectors, self._whitening, self._search_dims)).project

        thresholds = calibrate(sample, space.project, fit)
        return space.calibrated(thresholds.copy, thresholds.duplicate)

    def _new_view_gate(self, space: SearchSpace, count: int, force: bool = False) -> ViewGate | None:
        """A view gate for this encoder when `space` needs one, fitted on up to `view_gate.SAMPLE` of the
        collection's images read again. Fitted again when forced, or when it was fitted on fewer
        than SAMPLE images and the collection has doubled since; not fitted without a reader, or
        when fewer than `view_gate.MIN_IMAGES` images can be read, and then not tried again until
        the collection has doubled (reading hundreds of images that are gone costs minutes)."""
        key = encoder_key(self.encoder.info)
        gate = space.gate_for(self.encoder.info)
        if self._reader is None or count < MIN_IMAGES:
            return None
        if gate is not None and not force and not (gate.fitted_on < SAMPLE and count >= 2 * gate.fitted_on):
            return None
        tried = json.loads(self.store.get_meta(GATE_TRIED_KEY) or "{}")
        if gate is None and not force and tried.get("encoder") == key and count < 2 * int(tried["count"]):
            return None
        images = self._gate_images()
        if len(images) < MIN_IMAGES:
            self.store.set_meta(GATE_TRIED_KEY, json.dumps({"encoder": key, "count": count}))
            return None
        return fit_view_gate(images, lambda views: embed_images(self.encoder, views), key)

    def _gate_images(self) -> list[Image.Image]:
        """Up to SAMPLE of the collection's images, drawn with a fixed seed; images that can no
        longer be read are passed over, within GATE_TRIES images and GATE_READ_S seconds."""
        assert self._reader is not None
        ids = self.store.ids()
        tried = random.Random(0).sample(ids, min(len(ids), GATE_TRIES))
        images: list[Image.Image] = []
        deadline = time.monotonic() + GATE_READ_S
        for image_id in tried:
            if len(images) == SAMPLE or time.monotonic() > deadline:
                break
            payload = self.store.get(image_id)
            if payload is None:
                continue
            try:
                images.append(self._reader.decode(self._reader.read(image_id, payload), image_id))
            except (SourceError, FetchError, ImageError):
                continue
        return images

    # -- provenance (MLflow) ---------------------------------------------------------------

    def provenance(self) -> dict[str, str | None]:
        """Which registered model version built this index, and the MLflow run that built it."""
        recorded = recorded_provenance(self.store)
        served = self.encoder.registered
        recorded["served_model_uri"] = served.uri if served is not None else None
        return recorded

    def record_provenance(self, run_id: str | None, model: ModelRecord | None) -> None:
        """Remember the index run and the registered encoder version with the index."""
        if run_id:
            self.store.set_meta("index_run_id", run_id)
        if model is not None:
            self.store.set_meta("model_uri", model.uri)
            self.store.set_meta("model_registry_version", model.version)
            self.store.set_meta("model_sha256", model.sha256)

    def check_registered_model(self) -> None:
        """A registered version asked for by URI must be the one the index was built with: the
        same name/version/dim is checked by the store, the same ONNX file (SHA-256) here."""
        served = self.encoder.registered
        built_sha = self.store.get_meta("model_sha256")
        if served is None or not built_sha or served.sha256 == built_sha:
            return
        raise EncoderMismatchError(
            f"the index was built by {self.store.get_meta('model_uri')} (sha256 {built_sha[:12]}), "
            f"not by {served.uri} (sha256 {served.sha256[:12]}); serve it with the model that built "
            "it or rebuild the index"
        )


def recorded_provenance(store: VectorStore) -> dict[str, str | None]:
    return {key: store.get_meta(key) for key in PROVENANCE_KEYS}
