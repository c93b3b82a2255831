"""The search space of an index: how its vectors are compared, fitted and versioned as one.

Scores mean something only in the space they were computed in. Whitening (`imagefinder.whitening`)
moves every score, so the copy threshold calibrated in a whitened space is wrong in the raw one
and the other way round. A `SearchSpace` keeps the two together: the projection searched through
(None: the raw encoder vectors), the copy threshold calibrated in it, and what the projection was
fitted with and on. Every fit or calibration makes a new `version` (shown by `info`; a store
notices another process's change by its stored record), and every new projection a new
`projection_id`, which is what an index built through it is valid for.

The service decides the space (`maintenance.Maintenance`); every store persists it with the
index and searches through it; `imagefinder migrate` carries it, so a copy is judged on the same
scale after a move between backends.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from imagefinder.calibration import DEFAULT_THRESHOLD
from imagefinder.encoders.base import EncoderInfo
from imagefinder.errors import StoreError
from imagefinder.view_gate import ViewGate, encoder_key

# whitened = l2n((x - mean) @ matrix)
Projection = tuple[NDArray[np.float32], NDArray[np.float32]]

# Names under which a store keeps a space: one text record and two arrays.
RECORD_KEY = "search_space"
MEAN_KEY, MATRIX_KEY = "projection_mean", "projection"


def record_version(record: str) -> str:
    """The version of a stored space's record ("" for none: a space never decided)."""
    return str(json.loads(record)["version"]) if record else ""


@dataclass(frozen=True, eq=False)
class SearchSpace:
    projection: Projection | None = None
    copy_threshold: float = DEFAULT_THRESHOLD
    fitted_on: int = 0  # images in the collection when the projection was fitted
    fitted_with: str = ""  # the settings of that fit; another setting asks for a refit
    version: str = ""  # changes with every fit or calibration; "" for a space never decided
    # Changes with every fit only: vectors indexed through the projection stay valid while it is
    # the same, whatever the threshold does.
    projection_id: str = ""
    # The threshold for two images of the collection (a duplicates scan, "more like this"): both
    # were in the fit, so their scores are not inflated the way a new image's can be in a space
    # learned from few images (see `calibration`). None: the copy threshold.
    duplicate_threshold: float | None = None
    # When a query that found no copy is worth a second pass (`imagefinder.view_gate`); it reads
    # raw encoder vectors, so it outlives refits of the projection. None: always worth it.
    view_gate: ViewGate | None = None

    @property
    def in_collection_threshold(self) -> float:
        return self.copy_threshold if self.duplicate_threshold is None else self.duplicate_threshold

    @staticmethod
    def new_version() -> str:
        return uuid.uuid4().hex

    def fitted(self, projection: Projection | None, fitted_on: int, fitted_with: str) -> SearchSpace:
        """A new space through `projection`; its copy threshold is calibrated next (`calibrated`).
        No projection after no projection keeps the id: the index built through it stays valid."""
        version = self.new_version()
        same = projection is None and self.projection is None and self.projection_id
        projection_id = self.projection_id if same else version
        return replace(
            self,
            projection=projection,
            fitted_on=fitted_on,
            fitted_with=fitted_with,
            version=version,
            projection_id=projection_id,
        )

    def calibrated(self, copy_threshold: float, duplicate_threshold: float | None = None) -> SearchSpace:
        return replace(
            self,
            copy_threshold=round(float(copy_threshold), 4),
            duplicate_threshold=None if duplicate_threshold is None else round(float(duplicate_threshold), 4),
            version=self.new_version(),
        )

    def with_view_gate(self, gate: ViewGate) -> SearchSpace:
        return replace(self, view_gate=gate, version=self.new_version())

    def gate_for(self, encoder: EncoderInfo) -> ViewGate | None:
        """The view gate, when it was fitted for `encoder`'s vectors."""
        gate = self.view_gate
        return gate if gate is not None and gate.encoder == encoder_key(encoder) else None

    def dim(self, encoder_dim: int) -> int:
        """The searched dimension."""
        return encoder_dim if self.projection is None else int(self.projection[1].shape[1])

    def project(self, vectors: NDArray[np.float32]) -> NDArray[np.float32]:
        """Encoder vectors (..., dim) -> searched vectors, L2-normalised (cosine = dot product)."""
        if self.projection is None:
            return np.ascontiguousarray(vectors, dtype=np.float32)
        mean, matrix = self.projection
        projected = (np.asarray(vectors, dtype=np.float32) - mean) @ matrix
        norms = np.linalg.norm(projected, axis=-1, keepdims=True)
        return (projected / np.maximum(norms, 1e-12)).astype(np.float32)

    def describe(self) -> dict[str, object]:
        """What `imagefinder info` and /health show."""
        return {
            "version": self.version,
            "whitened": self.projection is not None,
            "dims": None if self.projection is None else int(self.projection[1].shape[1]),
            "copy_threshold": self.copy_threshold,
            "duplicate_threshold": self.in_collection_threshold,
            "fitted_on": self.fitted_on,
            "fitted_with": self.fitted_with,
            "view_gate": None if self.view_gate is None else self.view_gate.describe(),
        }

    # -- persistence: a text record and two arrays, which every store can keep --------------

    def record(self) -> str:
        return json.dumps(
            {
                "version": self.version,
                "copy_threshold": self.copy_threshold,
                "duplicate_threshold": self.duplicate_threshold,
                "fitted_on": self.fitted_on,
                "fitted_with": self.fitted_with,
                "projection_id": self.projection_id,
                "whitened": self.projection is not None,
                "view_gate": None if self.view_gate is None else self.view_gate.to_dict(),
            }
        )

    def arrays(self) -> dict[str, bytes]:
        if self.projection is None:
            return {}
        mean, matrix = self.projection
        return {MEAN_KEY: array_bytes(mean), MATRIX_KEY: array_bytes(matrix)}

    @classmethod
    def from_record(cls, record: str, projection: Projection | None) -> SearchSpace:
        """The space of a stored `record`, through `projection` (read from the arrays it was
        stored as: `projection_from`)."""
        fields = json.loads(record)
        if fields.get("whitened", projection is not None) and projection is None:
            # Searching raw vectors against a threshold calibrated in whitened scores would judge
            # every copy on the wrong scale: refuse instead.
            raise StoreError(
                f"the search space {fields['version']} is whitened, but its projection is missing"
            )
        return cls(
            projection,
            float(fields["copy_threshold"]),
            int(fields["fitted_on"]),
            str(fields["fitted_with"]),
            str(fields["version"]),
            str(fields["projection_id"]),
            None if fields.get("duplicate_threshold") is None else float(fields["duplicate_threshold"]),
            None if fields.get("view_gate") is None else ViewGate.from_dict(fields["view_gate"]),
        )


def projection_from(arrays: Mapping[str, bytes]) -> Projection | None:
    """The projection kept as the two arrays of `arrays`, if they are there."""
    if MEAN_KEY in arrays and MATRIX_KEY in arrays:
        return array_from(arrays[MEAN_KEY]), array_from(arrays[MATRIX_KEY])
    return None


def array_bytes(array: NDArray[np.float32]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def array_from(data: bytes) -> NDArray[np.float32]:
    return np.load(io.BytesIO(data), allow_pickle=False)
