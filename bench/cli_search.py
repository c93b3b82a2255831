"""Repeated `imagefinder search IMAGE` calls: each loading the model and the index in its own
process (`--no-server`), next to the same calls answered by `imagefinder serve` already serving
that index, alternating, on the demo collection, in one run. Wall time of the whole command
(interpreter start-up included), median and best over `--repeats` calls each.

usage: python bench/cli_search.py [--repeats 8] [--out bench/results/cli_search.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cli_search.json")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.live import serving

    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        home = Path(tmp)
        env = {**os.environ, "IMAGEFINDER_HOME": str(home), "IMAGEFINDER_TRACKING__ENABLED": "false"}
        cli = [sys.executable, "-m", "imagefinder"]
        subprocess.run([*cli, "demo-data", str(home / "photos")], env=env, check=True, capture_output=True)
        subprocess.run(
            [*cli, "index", str(home / "photos"), "--quiet"], env=env, check=True, capture_output=True
        )
        query = str(home / "photos" / "chelsea.png")
        search = [*cli, "search", query, "-k", "5"]
        timings: dict[str, list[float]] = {"in_process": [], "via_server": []}
        with serving(env):
            for _ in range(args.repeats):
                timings["in_process"].append(timed([*search, "--no-server"], env))
                timings["via_server"].append(timed(search, env))
    summary = {
        name: {"median_s": round(statistics.median(values), 3), "best_s": round(min(values), 3)}
        for name, values in timings.items()
    }
    result = {
        "what": "wall time of `imagefinder search IMAGE -k 5` (default int8 encoder, demo collection), "
        "in its own process vs answered by a running `imagefinder serve` of the same index",
        "repeats": args.repeats,
        "summary": summary,
        "speedup_median": round(summary["in_process"]["median_s"] / summary["via_server"]["median_s"], 2),
        "timings_s": {name: [round(v, 3) for v in values] for name, values in timings.items()},
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))  # noqa: T201


if __name__ == "__main__":
    main()
