"""`imagefinder index --engine ray` next to the single-process indexer, on the same photos, in one
run, through the real CLI.

Photos: the dev near-duplicate benchmark's collection and queries (real photos and their edits,
about 830 JPEG files) when ../shared is present, else the demo photos and edits of them. Each
configuration indexes them into a new embedded index:

- local: the single-process indexer (threads in one process);
- ray-1cpu, ray-2cpu: `--engine ray` on a local Ray cluster started by the run with 1 or 2 CPUs
  (the decode tasks' slots; one encoder actor beside them).

For each: images/s of the indexing itself (the run's own report: listing to last write), the wall
time of the whole command (start-up included), the time from the command's start to the first
image committed (`--verbose` prints each), the driver's peak RSS (its own rusage), and the peak
RSS of the Ray processes (sampled every 0.2 s from /proc: workers, actors, raylet, GCS), and
whether the index equals the single-process one (ids, payloads; vectors within 1e-5).
Configurations alternate over `--repeats` rounds; the best round of each is reported next to the
median, since the machine is shared and noisy.

usage: python bench/ray.py [--benchmarks ../shared/benchmarks] [--repeats 2] [--out bench/results/ray.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIGS: dict[str, dict[str, str]] = {
    "local": {},
    "ray-1cpu": {"IMAGEFINDER_ENGINE": "ray", "IMAGEFINDER_RAY__CPUS": "1"},
    "ray-2cpu": {"IMAGEFINDER_ENGINE": "ray", "IMAGEFINDER_RAY__CPUS": "2"},
}


def photo_folder(benchmarks: Path, scratch: Path) -> tuple[Path, str]:
    near = benchmarks / "near_duplicate"
    folder = scratch / "photos"
    folder.mkdir()
    if near.is_dir():
        for sub in ("collection", "queries"):
            for path in sorted((near / sub).iterdir()):
                if path.is_file():
                    shutil.copy(path, folder / f"{sub}-{path.name}")
        return folder, f"{near} (collection + queries)"
    from PIL import Image, ImageOps

    from imagefinder.demo import write_demo_collection

    demo = scratch / "demo"
    write_demo_collection(demo)
    for path in sorted(demo.iterdir()):
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        for turn in range(4):
            for mirror in (False, True):
                edited = image.rotate(90 * turn, expand=True)
                edited = ImageOps.mirror(edited) if mirror else edited
                edited.save(folder / f"{path.stem}-{turn}-{int(mirror)}.jpg", quality=85)
    return folder, "demo photos, turned and mirrored (../shared absent)"


class RaySampler:
    """Peak RSS of Ray's processes (their titles start with ray:: or name a Ray binary)."""

    def __init__(self) -> None:
        self.peak_workers = 0
        self.peak_total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RaySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            workers = total = 0
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    title = (entry / "cmdline").read_bytes()
                    status = (entry / "status").read_text()
                except OSError:
                    continue
                rss = next(
                    (
                        int(line.split()[1]) * 1024
                        for line in status.splitlines()
                        if line.startswith("VmRSS:")
                    ),
                    0,
                )
                if title.startswith(b"ray::"):
                    workers = max(workers, rss)
                    total += rss
                elif b"/ray/core/src/ray/" in title or b"ray/_private" in title or b"ray/dashboard" in title:
                    total += rss
            self.peak_workers = max(self.peak_workers, workers)
            self.peak_total = max(self.peak_total, total)


def run_config(name: str, photos: Path, scratch: Path, models: Path, round_: int) -> dict[str, Any]:
    home = scratch / f"{name}-{round_}"
    shutil.copytree(models, home / "models")
    env = {
        **os.environ,
        **CONFIGS[name],
        "IMAGEFINDER_HOME": str(home),
        "IMAGEFINDER_TRACKING__ENABLED": "false",
    }
    started = time.perf_counter()
    first: float | None = None
    with RaySampler() as sampler:
        process = subprocess.Popen(
            [sys.executable, "-m", "imagefinder", "index", str(photos), "--quiet", "--verbose"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert process.stdout is not None
        for line in process.stdout:
            if first is None and line.startswith("indexed ") and "," not in line:
                first = time.perf_counter() - started
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{name}: exit {process.returncode}")
    report = json.loads((home / "index" / "last_index_report.json").read_text())
    return {
        "config": name,
        "round": round_,
        "home": str(home),
        "indexed": report["indexed"],
        "failed": report["failed"],
        "duplicates": report["duplicates"],
        "index_seconds": report["seconds"],
        "images_per_s": report["images_per_s"],
        "wall_seconds": round(wall, 2),
        "wall_images_per_s": round(report["indexed"] / wall, 2),
        "first_result_seconds": round(first, 2) if first is not None else None,
        "driver_peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "ray_worker_peak_rss_mb": round(sampler.peak_workers / 2**20, 1),
        "ray_processes_peak_rss_mb": round(sampler.peak_total / 2**20, 1),
    }


def exported(home: Path) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    import pyarrow.parquet as pq

    out = home / "export"
    env = {**os.environ, "IMAGEFINDER_HOME": str(home), "IMAGEFINDER_TRACKING__ENABLED": "false"}
    subprocess.run(
        [sys.executable, "-m", "imagefinder", "export", "--parquet", str(out)],
        env=env,
        check=True,
        capture_output=True,
    )
    rows: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}
    for path in sorted(out.glob("*.parquet")):
        table = pq.read_table(path)
        for image_id, vector, payload in zip(
            table.column("id").to_pylist(),
            table.column("vector").to_pylist(),
            table.column("payload").to_pylist(),
            strict=True,
        ):
            data = json.loads(payload)
            data.pop("added_at", None)
            rows[image_id] = (np.asarray(vector, dtype=np.float32), data)
    return rows


def compare(reference: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    ids_equal = sorted(reference) == sorted(other)
    common = sorted(set(reference) & set(other))
    diff = max((float(np.abs(reference[i][0] - other[i][0]).max()) for i in common), default=0.0)
    payloads = sum(reference[i][1] == other[i][1] for i in common)
    return {
        "same_ids": ids_equal,
        "max_abs_vector_difference": diff,
        "payloads_equal": payloads,
        "images": len(common),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--benchmarks", type=Path, default=ROOT.parent / "shared" / "benchmarks")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ray.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        scratch = Path(tmp)
        photos, described = photo_folder(args.benchmarks, scratch)
        # One ONNX export shared by every run, so no run pays for it.
        from imagefinder.encoders.lite0 import lite0_encoder

        models = scratch / "models"
        lite0_encoder(models)
        runs: list[dict[str, Any]] = []
        for round_ in range(args.repeats):
            for name in CONFIGS:
                runs.append(run_config(name, photos, scratch, models, round_))
                print(json.dumps({k: v for k, v in runs[-1].items() if k != "home"}), flush=True)  # noqa: T201
        reference = exported(Path(next(r["home"] for r in runs if r["config"] == "local")))
        summary: dict[str, Any] = {}
        for name in CONFIGS:
            mine = [r for r in runs if r["config"] == name]
            best = max(mine, key=lambda r: r["images_per_s"])
            summary[name] = {
                "images_per_s_best": best["images_per_s"],
                "images_per_s_median": statistics.median(r["images_per_s"] for r in mine),
                "wall_images_per_s_best": max(r["wall_images_per_s"] for r in mine),
                "first_result_seconds_best": min(r["first_result_seconds"] for r in mine),
                "driver_peak_rss_mb_max": max(r["driver_peak_rss_mb"] for r in mine),
                "ray_worker_peak_rss_mb_max": max(r["ray_worker_peak_rss_mb"] for r in mine),
                "ray_processes_peak_rss_mb_max": max(r["ray_processes_peak_rss_mb"] for r in mine),
                "same_index_as_local": compare(reference, exported(Path(best["home"])))
                if name != "local"
                else None,
            }
        local = summary["local"]["images_per_s_best"]
        for name in CONFIGS:
            summary[name]["images_per_s_vs_local"] = round(summary[name]["images_per_s_best"] / local, 3)
    result = {
        "what": "index --engine ray (local Ray cluster started by the run) next to the "
        "single-process indexer, same photos, same run, through the CLI",
        "photos": described,
        "images": runs[0]["indexed"],
        "repeats": args.repeats,
        "summary": summary,
        "runs": [{k: v for k, v in r.items() if k != "home"} for r in runs],
        "gpu": {
            "measured": False,
            "why": "this session was not lent a GPU machine (device status: not drawn); "
            "no GPU figure is guessed",
        },
        "machine": {
            "python": platform.python_version(),
            "processor": platform.machine(),
            "cores": len(os.sched_getaffinity(0)),
        },
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))  # noqa: T201


if __name__ == "__main__":
    main()
