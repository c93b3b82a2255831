"""Installed size of ImageFinder's core and of each extra, each measured in a new virtual
environment (MB on disk, `du`), written to bench/results/install.json.

- core_mb: a new venv with the wheel and its core dependencies, less the empty venv it started
  from (pip and setuptools);
- extras_mb[name]: what `pip install 'imagefinder[name]'` adds on top of the core, in its own venv.
  torch, where an extra needs it, is installed first as `torch==2.13.0`, which this project's
  machines resolve to a local CPU wheel (elsewhere, PyPI's Linux x86_64 torch is a CUDA build
  several GB larger: use PyTorch's CPU index for the same figure);
- dev_environment_mb: the development environment `make install` builds (every extra and the test tools),
  for comparison with the 2.1 GB every install used to be.

usage: python tools/install_sizes.py WHEEL [--out bench/results/install.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("export", "huggingface", "milvus", "ray", "parquet")
TORCH_CPU = "torch==2.13.0"
NEEDS_TORCH = {"export", "huggingface"}


def megabytes(path: Path) -> float:
    output = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True).stdout
    return round(int(output.split()[0]) / 1024, 1)


def new_venv(where: Path) -> list[str]:
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    return [str(where / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("wheel", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "install.json")
    args = parser.parse_args()
    wheel = str(args.wheel.resolve())
    with tempfile.TemporaryDirectory(prefix="install-sizes-") as tmp:
        scratch = Path(tmp)
        new_venv(scratch / "empty")
        empty = megabytes(scratch / "empty")
        pip = new_venv(scratch / "core")
        subprocess.run([*pip, wheel], check=True)
        core = megabytes(scratch / "core")
        print(f"core {core - empty:.1f} MB", flush=True)  # noqa: T201
        extras: dict[str, float] = {}
        for extra in EXTRAS:
            pip = new_venv(scratch / extra)
            if extra in NEEDS_TORCH:
                subprocess.run([*pip, TORCH_CPU], check=True)
            subprocess.run([*pip, f"{wheel}[{extra}]"], check=True)
            extras[extra] = round(megabytes(scratch / extra) - core, 1)
            print(f"{extra} +{extras[extra]} MB", flush=True)  # noqa: T201
    today = megabytes(ROOT / ".venv") if (ROOT / ".venv").is_dir() else None
    result = {
        "what": "installed size (du, MB) in new virtual environments: the core (less an empty venv), "
        "and what each extra adds on top of it",
        "core_mb": round(core - empty, 1),
        "extras_mb": extras,
        "empty_venv_mb": empty,
        "torch": f"{TORCH_CPU} installed first for the extras that need torch (a local CPU wheel here)",
        "dev_environment_mb": today,
        "dev_environment": "make install: every extra, the Milvus server and the test tools",
        "wheel": Path(wheel).name,
        "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))  # noqa: T201


if __name__ == "__main__":
    main()
