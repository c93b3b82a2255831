"""The int8 default's vectors on a CPU without VNNI, next to this machine's, in one run.

The other CPU is emulated: Debian's qemu-user (`qemu-x86_64 -cpu Haswell`: AVX2, no AVX-512, no
VNNI) runs this project's Python and ONNX Runtime. ONNX Runtime's u8s8 kernels saturate on such
CPUs; ImageFinder sets `session.x64quantprecision` there (encoders/onnx_runtime.py). Measured:

- photos: the 17 demo photos, native vs emulated, with the fix (as shipped) and without it (the
  option forced off in this script's child process):
  cosine per photo, minimum, and whether bit-identical;
- dev benchmark (../shared, when present): the near-duplicate collection and queries embedded
  natively and emulated with the fix; recall@1 of each (nearest collection image by cosine, one
  view), and the share of queries whose top-1 is the same.

usage: python bench/int8_cpus.py [--benchmarks ../shared/benchmarks] [--limit N]
                                [--out bench/results/int8_cpus.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

EMBED = """
import sys
from pathlib import Path
import numpy as np
import imagefinder.encoders.onnx_runtime as runtime
if sys.argv[1] == "off":
    runtime.exact_int8_dot_products = lambda: True  # the fix forced off, for the comparison
from imagefinder.encoders.lite0 import lite0_encoder
from imagefinder.images import ImageLimits, decode_image
encoder = lite0_encoder(Path(sys.argv[2]), lanes=1)
limits = ImageLimits(max_pixels=60_000_000, max_bytes=50 * 2**20)
vectors = []
for line in Path(sys.argv[4]).read_text().splitlines():
    image = decode_image(Path(line).read_bytes(), limits, line, encoder.min_short_side)
    vectors.append(encoder.embed_arrays(encoder.preprocess(image)[None])[0])
np.save(sys.argv[3], np.stack(vectors))
"""


def embed(files: list[Path], fix: str, emulated: bool, scratch: Path, models: Path, name: str) -> np.ndarray:
    listing = scratch / f"{name}.txt"
    listing.write_text("\n".join(map(str, files)))
    script = scratch / "embed.py"
    script.write_text(EMBED)
    out = scratch / f"{name}.npy"
    command = [sys.executable, str(script), fix, str(models), str(out), str(listing)]
    if emulated:
        command = [shutil.which("qemu-x86_64") or "qemu-x86_64", "-cpu", "Haswell", *command]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    print(f"{name}: {len(files)} images in {time.perf_counter() - started:.0f} s", flush=True)  # noqa: T201
    return np.load(out)


def compare(a: np.ndarray, b: np.ndarray, names: list[str]) -> dict[str, object]:
    cosines = (a * b).sum(axis=1)
    return {
        "bit_identical": bool(np.array_equal(a, b)),
        "min_cosine": round(float(cosines.min()), 4),
        "below_0_999": int((cosines < 0.999).sum()),
        "cosine": {n: round(float(c), 4) for n, c in zip(names, cosines, strict=True)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--benchmarks", type=Path, default=ROOT.parent / "shared" / "benchmarks")
    parser.add_argument("--limit", type=int, help="Only this many queries of the dev benchmark.")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "int8_cpus.json")
    args = parser.parse_args()
    from imagefinder.demo import write_demo_collection
    from imagefinder.encoders.lite0 import ensure_lite0_int8_onnx

    result: dict[str, object] = {
        "what": "int8 default vectors: this CPU (VNNI) vs an emulated Haswell (qemu-x86_64 -cpu Haswell)",
        "emulator": subprocess.run(
            ["qemu-x86_64", "--version"], capture_output=True, text=True
        ).stdout.splitlines()[0],
    }
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        scratch = Path(tmp)
        models = scratch / "models"
        ensure_lite0_int8_onnx(models)
        photos = write_demo_collection(scratch / "photos")
        names = [p.name for p in photos]
        native = embed(photos, "on", False, scratch, models, "photos-native")
        result["photos_with_fix"] = compare(
            native, embed(photos, "on", True, scratch, models, "photos-fix"), names
        )
        result["photos_without_fix"] = compare(
            native, embed(photos, "off", True, scratch, models, "photos-no-fix"), names
        )
        near = args.benchmarks / "near_duplicate"
        if near.is_dir():
            truth = {
                row["query_file"]: row["expected_collection_file"]
                for row in csv.DictReader(open(near / "ground_truth.csv"))
            }
            collection = sorted(p for p in (near / "collection").iterdir() if p.is_file())
            queries = sorted(p for p in (near / "queries").iterdir() if p.name in truth)[: args.limit]
            index = {p.name: i for i, p in enumerate(collection)}
            expected = np.array([index[truth[q.name]] for q in queries])
            tops = {}
            for label, emulated in (("native", False), ("emulated_with_fix", True)):
                c = embed(collection, "on", emulated, scratch, models, f"collection-{label}")
                q = embed(queries, "on", emulated, scratch, models, f"queries-{label}")
                tops[label] = (q @ c.T).argmax(axis=1)
            result["dev_benchmark"] = {
                "queries": len(queries),
                "collection": len(collection),
                "recall_at_1": {
                    label: round(float((top == expected).mean()), 4) for label, top in tops.items()
                },
                "same_top_1": round(float((tops["native"] == tops["emulated_with_fix"]).mean()), 4),
            }
    result["date"] = time.strftime("%Y-%m-%d")
    result["machine"] = {"cores": len(os.sched_getaffinity(0))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if "photos" not in k}, indent=1))  # noqa: T201


if __name__ == "__main__":
    main()
