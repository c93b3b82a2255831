"""The search space's own rules: versions, what keeps an index valid, and a record whose
projection went missing."""

from __future__ import annotations

import numpy as np
import pytest

from imagefinder.errors import StoreError
from imagefinder.search_space import SearchSpace, projection_from

PROJECTION = (np.zeros(4, dtype=np.float32), np.eye(4, 3, dtype=np.float32))


def test_a_fit_makes_a_new_projection_a_calibration_only_a_new_version() -> None:
    first = SearchSpace().fitted(PROJECTION, 10, "power=0.25")
    calibrated = first.calibrated(0.61)
    assert calibrated.projection_id == first.projection_id != calibrated.version
    refitted = calibrated.fitted(PROJECTION, 12, "power=0.25")
    assert refitted.projection_id not in (first.projection_id, "") and refitted.copy_threshold == 0.61


def test_no_projection_after_no_projection_keeps_the_index_valid() -> None:
    raw = SearchSpace().fitted(None, 10, "power=0")
    again = raw.fitted(None, 20, "power=0")
    assert again.projection_id == raw.projection_id != "" and again.version != raw.version
    assert again.fitted_on == 20
    assert raw.fitted(PROJECTION, 30, "power=0.25").projection_id != raw.projection_id


def test_a_record_round_trips_and_a_missing_projection_is_refused() -> None:
    space = SearchSpace().fitted(PROJECTION, 10, "power=0.25").calibrated(0.6)
    back = SearchSpace.from_record(space.record(), projection_from(space.arrays()))
    assert (back.version, back.projection_id, back.copy_threshold, back.fitted_on) == (
        space.version,
        space.projection_id,
        0.6,
        10,
    )
    np.testing.assert_array_equal(back.projection[1], PROJECTION[1])  # type: ignore[index]
    with pytest.raises(StoreError, match="projection is missing"):
        SearchSpace.from_record(space.record(), None)
