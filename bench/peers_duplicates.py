"""The peers of `imagefinder duplicates`, run the way their documentation shows, on one folder.

Runs in its own environment (`make bench-duplicates` builds bench/.venv-peers): fastdup's licence
forbids commercial use, so it is a reference here and never a dependency of ImageFinder, and
imagededup pins torch/torchvision versions that do not install beside ours.

- imagededup PHash and DHash: `find_duplicates(image_dir, recursive=True)` at the documented
  default `max_distance_threshold=10`; its duplicate lists are the predicted pairs.
- fastdup: `fastdup.create(work_dir, input_dir).run()` at its defaults, then its
  `connected_components()`: the predicted groups.

usage: python bench/peers_duplicates.py FOLDER OUT.json
Ids in OUT are paths relative to FOLDER, as `imagefinder index FOLDER` names the images.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any


def imagededup(folder: Path) -> dict[str, Any]:
    # imagededup's package imports its CNN method (torch, torchvision) even for hashing; neither
    # installs beside the torch of this machine, and hashing does not use them.
    for name, attribute in (("imagededup.methods.cnn", "CNN"), ("imagededup.utils.models", "CustomModel")):
        stub = types.ModuleType(name)
        setattr(stub, attribute, None)
        sys.modules[name] = stub
    from imagededup.methods.hashing import DHash, PHash

    out: dict[str, Any] = {}
    for label, method in (("imagededup-phash", PHash), ("imagededup-dhash", DHash)):
        started = time.perf_counter()
        found = method(verbose=False).find_duplicates(image_dir=str(folder), recursive=True)
        pairs = {
            tuple(sorted((_relative(a, folder), _relative(b, folder)))) for a, bs in found.items() for b in bs
        }
        out[label] = {
            "how": f"{method.__name__}().find_duplicates(recursive=True), max_distance_threshold=10 "
            "(the default)",
            "pairs": sorted(pairs),
            "seconds": round(time.perf_counter() - started, 2),
        }
    return out


def fastdup(folder: Path) -> dict[str, Any]:
    import fastdup as fd_module

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        analysis = fd_module.create(work_dir=work, input_dir=str(folder))
        analysis.run(overwrite=True)
        components = analysis.connected_components()
        frame = components[0] if isinstance(components, tuple) else components
        groups: dict[int, list[str]] = {}
        for component, filename in zip(frame["component_id"], frame["filename"], strict=True):
            groups.setdefault(int(component), []).append(_relative(filename, folder))
    return {
        "fastdup": {
            "how": "fastdup.create(work_dir, input_dir).run() at its defaults, connected_components()",
            "groups": [sorted(members) for members in groups.values() if len(members) > 1],
            "seconds": round(time.perf_counter() - started, 2),
            "version": getattr(fd_module, "__version__", "?"),
        }
    }


def _relative(path: str, folder: Path) -> str:
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = folder / candidate
    return candidate.resolve().relative_to(folder.resolve()).as_posix()


def main() -> None:
    folder, out = Path(sys.argv[1]), Path(sys.argv[2])
    results: dict[str, Any] = {}
    for run in (imagededup, fastdup):
        try:
            results.update(run(folder))
        except Exception as exc:  # noqa: BLE001  (a peer that fails is reported, not fatal)
            results[run.__name__] = {"error": f"{type(exc).__name__}: {exc}"}
    out.write_text(json.dumps(results))


if __name__ == "__main__":
    main()
