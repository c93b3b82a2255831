"""The Ray engine's logic without a cluster (its real runs are in test_ray_engine): the encoder
actor's per-image failures, how many actors a cluster gets, and a worker's other encoder."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imagefinder.encoders.base import EncoderInfo
from imagefinder.errors import EngineError
from imagefinder.ray_engine import ClusterResources, RayOptions, _EncoderActor, encoder_count
from tests.factories import FakeEncoder, gradient


class PickyEncoder(FakeEncoder):
    """Refuses images narrower than 20 pixels, as a model's own preprocessing may."""

    def preprocess(self, image: Image.Image):  # type: ignore[no-untyped-def]
        if image.width < 20:
            raise ValueError("image too narrow for this model")
        return super().preprocess(image)


def _decoded(width: int) -> dict[str, object]:
    return {"hash": f"h{width}", "decode_s": 0.0, "image": np.asarray(gradient(width, (width, 40)))}


def test_an_image_the_preprocessing_refuses_fails_alone() -> None:
    actor = _EncoderActor(PickyEncoder, FakeEncoder.info)
    results = actor.embed([_decoded(64), _decoded(8), {"failed": ("fetch", "gone")}, _decoded(32)])
    assert [sorted(r) for r in results] == [
        ["decode_s", "hash", "vector"],
        ["failed"],
        ["failed"],
        ["decode_s", "hash", "vector"],
    ]
    assert results[1]["failed"] == ("error", "ValueError: image too narrow for this model")
    assert results[0]["vector"].shape == (192,)


def test_a_worker_that_builds_another_encoder_is_refused() -> None:
    other = EncoderInfo("fake", "2", 192, "8x8 thumbnail")
    with pytest.raises(EngineError, match="install the same ImageFinder and model on every node"):
        _EncoderActor(FakeEncoder, other)


@pytest.mark.parametrize(
    ("asked", "cpus", "gpus", "expected"),
    [
        (None, 2, 0, 1),  # a laptop: one actor
        (None, 16, 0, 4),  # one per 4 CPUs
        (3, 2, 0, 3),  # as asked on CPUs
        (None, 16, 2, 2),  # one per GPU
        (4, 16, 1, 1),  # never more than the GPUs: the others could never be placed
    ],
)
def test_encoder_actors_per_cluster(asked: int | None, cpus: float, gpus: float, expected: int) -> None:
    assert encoder_count(RayOptions(encoders=asked), ClusterResources(cpus, gpus)) == expected
