"""Per query of the dev near-duplicate task, what the second query pass does for a model: whether
the first pass settles the query, the view gate's probability, and whether the plain view and
the `thorough` second pass each put the right image first. Summed per family: the queries the
second pass would put right that the gate turns away, and those the second pass puts wrong.

It explains why `adaptive` views gain less after self-supervised fine-tuning than on the base
model (docs/models.md). Give it a fine-tuned int8 ONNX file (`bench/finetune_device.py --keep
DIR` writes one) or `base`; the collection is indexed through the service `imagefinder serve`
builds, so the whitening, thresholds and gate are fitted as in real use.

usage: python bench/second_pass_queries.py --model base|FILE [--benchmarks ../shared/benchmarks]
                                           [--out bench/results/second_pass_queries.json]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import platform
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from duplicates import finetuned_encoder  # noqa: E402

from imagefinder.config import Settings  # noqa: E402
from imagefinder.evaluation.runner import read_ground_truth  # noqa: E402
from imagefinder.sources import FolderSource  # noqa: E402
from imagefinder.wiring import build_configured_encoder, open_store, service_for  # noqa: E402


def per_query(model: str, task: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="second-pass-") as work:
        settings = Settings(home=Path(work) / "home")
        encoder = build_configured_encoder(settings) if model == "base" else finetuned_encoder(Path(model))
        service = service_for(settings, encoder, open_store(settings))
        try:
            service.index(FolderSource(task / "collection", 10**8))
            space = service.store.search_space
            gate = space.gate_for(service.model)
            truth = read_ground_truth(task / "ground_truth.csv")
            with open(task / "query_transforms.csv") as handle:
                family = {row["query_file"]: row["family"] for row in csv.DictReader(handle)}
            rows = []
            for query in sorted((task / "queries").iterdir()):
                prepared = service.prepare(query.read_bytes(), str(query))
                vector = service.embed_prepared([prepared.pixels])[0]
                single = service.search_prepared(prepared, vector, 1, views="single")
                thorough = service.search_prepared(prepared, vector, 1, views="thorough")
                right = truth.get(query.name, set())
                rows.append(
                    {
                        "query": query.name,
                        "family": family.get(query.name, ""),
                        "settled": single[0].score >= space.in_collection_threshold,
                        "gate": None if gate is None else round(gate.probability(vector), 4),
                        "single_right": single[0].id in right,
                        "thorough_right": thorough[0].id in right,
                    }
                )
            thresholds = {
                "in_collection": round(space.in_collection_threshold, 4),
                "copy": round(space.copy_threshold, 4),
                "gate": None if gate is None else gate.threshold,
            }
        finally:
            service.close()
    return {"thresholds": thresholds, "rows": rows}


def summary(rows: list[dict[str, Any]], gate_threshold: float | None) -> dict[str, Any]:
    """Per family: queries, right at 1 single / thorough / adaptive, and of the unsettled
    queries, those the second pass puts right that the gate turns away and those it puts wrong."""
    by_family: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_family[row["family"]].append(row)
        by_family["all"].append(row)

    def gated_in(row: dict[str, Any]) -> bool:
        return gate_threshold is None or row["gate"] >= gate_threshold

    def adaptive_right(row: dict[str, Any]) -> bool:
        second = not row["settled"] and gated_in(row)
        return bool(row["thorough_right"] if second else row["single_right"])

    out = {}
    for name, members in sorted(by_family.items()):
        unsettled = [r for r in members if not r["settled"]]
        out[name] = {
            "queries": len(members),
            "recall@1_single": round(sum(r["single_right"] for r in members) / len(members), 4),
            "recall@1_thorough": round(sum(r["thorough_right"] for r in members) / len(members), 4),
            "recall@1_adaptive": round(sum(adaptive_right(r) for r in members) / len(members), 4),
            "unsettled": len(unsettled),
            "put_right_but_gated_out": sum(
                1 for r in unsettled if r["thorough_right"] and not r["single_right"] and not gated_in(r)
            ),
            "put_right_and_gated_in": sum(
                1 for r in unsettled if r["thorough_right"] and not r["single_right"] and gated_in(r)
            ),
            "put_wrong_by_second_pass": sum(
                1 for r in unsettled if r["single_right"] and not r["thorough_right"]
            ),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="base, or a fine-tuned int8 ONNX file")
    parser.add_argument("--benchmarks", type=Path, default=ROOT.parent / "shared" / "benchmarks")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "second_pass_queries.json")
    args = parser.parse_args()
    found = per_query(args.model, args.benchmarks / "near_duplicate")
    model = {"model": args.model}
    if args.model != "base":
        model["sha256"] = hashlib.sha256(Path(args.model).read_bytes()).hexdigest()
    result = {
        "machine": {"python": platform.python_version(), "processor": platform.machine()},
        "command": " ".join(["bench/second_pass_queries.py", *sys.argv[1:]]),
        **model,
        "thresholds": found["thresholds"],
        "families": summary(found["rows"], found["thresholds"]["gate"]),
        "rows": found["rows"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["families"]["all"]))  # noqa: T201
    print(f"written to {args.out}")  # noqa: T201


if __name__ == "__main__":
    main()
