"""Index a CSV of 2,000 URL rows served by a local HTTP server (own process, 127.0.0.1), with 5 %
bad rows and 5 % duplicates, and check that every good image is present exactly once and every
bad row is reported with its reason. Writes images/s and the per-stage breakdown.

Images: 1,800 distinct 800x600 JPEGs cut from the real photos scikit-image ships (random crops,
flips and colour changes), about the size of a phone photo downscaled for the web.

usage: python bench/ingest_csv.py [--rows 2000] [--out FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.http_server, the same server the tests use

SERVE = """
import sys, time
from pathlib import Path
from tests.http_server import ImageServer
folder = Path(sys.argv[1])
server = ImageServer({p.name: p.read_bytes() for p in folder.iterdir()}, slow_s=30)
server.__enter__()
print(server.base, flush=True)
time.sleep(3600)
"""


def make_images(count: int, folder: Path, seed: int) -> list[str]:
    from imagefinder.demo import DEMO_PHOTOS, skimage_data_dir

    rng = random.Random(seed)
    sources = [
        Image.open(skimage_data_dir() / name).convert("RGB")
        for name in DEMO_PHOTOS
        if (skimage_data_dir() / name).is_file()
    ]
    names = []
    for i in range(count):
        photo = rng.choice(sources)
        w, h = photo.size
        cw, ch = int(w * rng.uniform(0.5, 0.9)), int(h * rng.uniform(0.5, 0.9))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        image = photo.crop((x, y, x + cw, y + ch)).resize((800, 600), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        image = ImageEnhance.Color(image).enhance(rng.uniform(0.6, 1.4))
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.8, 1.2))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        name = f"g{i:05d}.jpg"
        (folder / name).write_bytes(buffer.getvalue())
        names.append(name)
    return names


def build_csv(
    path: Path, base: str, good: list[str], extra: list[str], rows: int, rng: random.Random
) -> dict:
    """Good and bad rows in random order, then the duplicates (each after what it duplicates).
    A duplicate-id row points at bytes of its own (`extra`), so only its id repeats."""
    n_bad = rows * 5 // 100
    n_dup = rows * 5 // 100
    lines = [(f"{base}/img/{name}", f"id-{name[:-4]}", "good") for name in good]
    bad_kinds = ["/missing", "/always500", "/html", "/html-as-jpeg", "/truncated.jpg", "EMPTYID", "NOHOST"]
    for i in range(n_bad):
        kind = bad_kinds[i % len(bad_kinds)]
        if kind == "EMPTYID":
            lines.append((f"{base}/img/{good[i]}?x={i}", "", "bad"))
        elif kind == "NOHOST":
            lines.append((f"http:///nohost-{i}.jpg", f"bad-{i}", "bad"))
        else:
            lines.append((f"{base}{kind}?n={i}", f"bad-{i}", "bad"))
    rng.shuffle(lines)
    duplicates = []
    for i in range(n_dup):
        name = good[i * 7 % len(good)]
        kind = i % 3
        if kind == 0:  # duplicate id
            duplicates.append((f"{base}/img/{extra[i % len(extra)]}", f"id-{name[:-4]}", "dup"))
        elif kind == 1:  # duplicate url
            duplicates.append((f"{base}/img/{name}", f"dup-url-{i}", "dup"))
        else:  # duplicate content at another url
            duplicates.append((f"{base}/img/{name}?copy={i}", f"dup-content-{i}", "dup"))
    rng.shuffle(duplicates)
    lines += duplicates
    with open(path, "w") as out:
        out.write("url,id,label\n")
        for url, image_id, label in lines:
            out.write(f"{url},{image_id},{label}\n")
    return {"rows": len(lines), "good": len(good), "bad": n_bad, "duplicates": n_dup}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ingest_csv.json")
    args = parser.parse_args()

    from imagefinder.config import Settings
    from imagefinder.sources import CsvSource
    from imagefinder.stores.embedded import EmbeddedStore
    from imagefinder.wiring import build_configured_encoder, build_fetcher, compose_service, image_limits

    settings = Settings()
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "served").mkdir()
        n_good = args.rows - 2 * (args.rows * 5 // 100)
        made = make_images(n_good + args.rows * 5 // 100, work / "served", seed=11)
        good, extra = made[:n_good], made[n_good:]
        server = subprocess.Popen(
            [sys.executable, "-c", SERVE, str(work / "served")], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        try:
            base = server.stdout.readline().strip()  # type: ignore[union-attr]
            plan = build_csv(work / "list.csv", base, good, extra, args.rows, rng)
            encoder = build_configured_encoder(settings)
            service = compose_service(
                encoder,
                EmbeddedStore(work / "index"),
                image_limits(settings),
                settings.batch_size,
                settings.decode_workers,
                settings.fetch.workers,
            )
            source = CsvSource(
                work / "list.csv", settings.images.max_bytes, build_fetcher(settings, allow_private=True)
            )
            started = time.perf_counter()
            report = service.index(source)
            seconds = time.perf_counter() - started
            ids = service.store.ids()
        finally:
            server.kill()
        expected = {f"id-{name[:-4]}" for name in good}
        checks = {
            "every_good_image_present": expected <= set(ids),
            "no_extra_or_repeated_ids": len(ids) == len(set(ids)) == len(expected),
            "every_bad_row_reported": report.failed == plan["bad"],
            "every_duplicate_reported": report.duplicates == plan["duplicates"],
            "every_problem_has_a_reason": all(p["reason"] for p in report.problems),
        }
        service.close()
    summary = report.to_dict()
    summary.pop("problems")
    result = {
        "plan": plan,
        "report": summary,
        "wall_s": round(seconds, 2),
        "images_per_s": round(report.indexed / seconds, 1),
        "checks": checks,
        "sample_problems": report.problems[:12],
        "settings": {
            "fetch_workers": settings.fetch.workers,
            "decode_workers": settings.decode_workers,
            "batch_size": settings.batch_size,
        },
        "machine": {"processor": platform.machine(), "cpus": os.cpu_count()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("plan", "wall_s", "images_per_s", "checks")}, indent=1))  # noqa: T201
    print(json.dumps(summary["stage_seconds"]), summary["failed_by_reason"])  # noqa: T201
    if not all(checks.values()):
        sys.exit("a check failed")


if __name__ == "__main__":
    main()
