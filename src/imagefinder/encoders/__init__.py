"""Encoders: images -> float32 vectors. `build_encoder` is the one place that maps a name to one."""

from __future__ import annotations

from pathlib import Path

from imagefinder.encoders.base import Encoder, EncoderInfo, embed_images
from imagefinder.errors import ModelUnavailableError

# efficientnet-lite0 is quantised to int8; efficientnet-lite0-fp32 is the same network unquantised
# (for indexes built before int8 became the default, and for CPUs without fast int8).
KNOWN_ENCODERS = ("efficientnet-lite0", "efficientnet-lite0-fp32")

__all__ = ["KNOWN_ENCODERS", "Encoder", "EncoderInfo", "build_encoder", "embed_images", "setting_for"]

# The IMAGEFINDER_ENCODER value that makes a built-in encoder's vectors, by (name, version): an
# index built before int8 became the default says "efficientnet-lite0" v2, now the fp32 setting.
_BUILT_IN_SETTINGS = {
    ("efficientnet-lite0", "2"): "efficientnet-lite0-fp32",
    ("efficientnet-lite0", "2-int8-2"): "efficientnet-lite0",
}


def setting_for(info: EncoderInfo) -> str | None:
    """The encoder setting that serves an index built with `info`, for built-in encoders."""
    return _BUILT_IN_SETTINGS.get((info.name, info.version))


def build_encoder(name: str, cache_dir: Path, pooling: str = "auto", device: str = "auto") -> Encoder:
    if name in ("efficientnet-lite0", "default", "efficientnet-lite0-fp32"):
        from imagefinder.encoders.lite0 import lite0_encoder

        return lite0_encoder(cache_dir, int8=name != "efficientnet-lite0-fp32")
    if name.startswith("hf:"):
        from imagefinder.encoders.huggingface import load_hf_encoder

        return load_hf_encoder(name[3:], cache_dir, pooling, device)  # type: ignore[no-any-return]
    raise ModelUnavailableError(
        f"unknown encoder {name!r}; use {', '.join(KNOWN_ENCODERS)} or hf:<Hugging Face id or folder>"
    )
