"""The int8 default gives the same vectors on CPUs without VNNI: the encoder run under emulation
of a Haswell CPU (AVX2, no AVX-512, no VNNI; Debian's qemu-user, which `make test` installs)
against the same photos embedded natively. The emulated CPU is shown to take ONNX Runtime's
saturating u8s8 kernel (a one-node probe gives the saturated sum without the fix), so the
agreement is the fix's doing, not an emulator that never reached that kernel."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imagefinder.encoders.lite0 import lite0_encoder
from imagefinder.images import ImageLimits, decode_image

QEMU = shutil.which("qemu-x86_64")
REQUIRED = os.environ.get("IMAGEFINDER_REQUIRE_EMULATOR")
if platform.machine() != "x86_64" or (QEMU is None and not REQUIRED):
    pytest.skip("needs an x86_64 machine with qemu-user (make test installs it)", allow_module_level=True)

PHOTOS = ("chelsea.png", "grass.png", "coffee.png")  # grass: the worst case seen, cosine 0.74
LIMITS = ImageLimits(max_pixels=60_000_000, max_bytes=50 * 2**20)

EMULATED = """
import json, sys
import numpy as np
from pathlib import Path
from imagefinder.encoders.onnx_runtime import exact_int8_dot_products
from imagefinder.encoders.lite0 import lite0_encoder
from imagefinder.images import ImageLimits, decode_image

# ORT's u8s8 matrix product of 64 products 255 x 127 without the fix: exact 2072640, or
# 32 x 32767 when pairs saturate in 16 bits.
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
k = 64
graph = helper.make_graph(
    [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "probe",
    [helper.make_tensor_value_info("A", TensorProto.UINT8, [1, k])],
    [helper.make_tensor_value_info("Y", TensorProto.INT32, [1, 16])],
    [numpy_helper.from_array(np.full((k, 16), 127, np.int8), "B")],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
model.ir_version = 8
session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
probe = int(session.run(None, {"A": np.full((1, k), 255, np.uint8)})[0][0, 0])

cache, out, *photos = sys.argv[1:]
encoder = lite0_encoder(Path(cache))
limits = ImageLimits(max_pixels=60_000_000, max_bytes=50 * 2**20)
vectors = []
for photo in photos:
    image = decode_image(Path(photo).read_bytes(), limits, photo, encoder.min_short_side)
    vectors.append(encoder.embed_arrays(encoder.preprocess(image)[None])[0])
np.save(out, np.stack(vectors))
print(json.dumps({"exact_without_help": exact_int8_dot_products(), "probe": probe}))
"""


def test_the_int8_default_agrees_on_a_cpu_without_vnni(
    tmp_path: Path, photos: Path, model_cache: Path
) -> None:
    assert QEMU is not None, "qemu-user is not installed (make test installs it)"
    encoder = lite0_encoder(model_cache)
    native = []
    for name in PHOTOS:
        image = decode_image((photos / name).read_bytes(), LIMITS, name, encoder.min_short_side)
        native.append(encoder.embed_arrays(encoder.preprocess(image)[None])[0])

    script = tmp_path / "emulated.py"
    script.write_text(EMULATED)
    out = tmp_path / "emulated.npy"
    result = subprocess.run(
        [QEMU, "-cpu", "Haswell", sys.executable, str(script), str(model_cache), str(out),
         *(str(photos / name) for name in PHOTOS)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    # The emulated CPU has no VNNI, and takes the saturating kernel when nothing prevents it.
    assert seen["exact_without_help"] is False
    assert seen["probe"] == 32 * 32767 != 64 * 255 * 127
    emulated = np.load(out)
    cosines = (emulated * np.stack(native)).sum(axis=1)
    assert cosines.min() >= 0.999, dict(zip(PHOTOS, cosines.round(4).tolist(), strict=True))
    np.testing.assert_allclose(emulated, np.stack(native), atol=1e-6)  # in fact bit-identical
