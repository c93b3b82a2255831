"""Retrieval metrics, with the definitions of the development benchmark's `score.py`.

- recall@k: fraction of queries with at least one relevant item in the top k.
- recall_all@k: mean fraction of a query's relevant items found in its top k.
- precision@k: mean fraction of the top k that is relevant (k in the denominator).
- mAP: mean over queries of AP = (sum of precision at each relevant hit) / (number relevant);
  relevant items not returned count as misses; a query without results scores 0.
- uAP (micro-AP, the copy-detection convention): one precision-recall curve over every
  (query, result, score) pair pooled and sorted by score.
Every mean is over all ground-truth queries.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Ranked = Sequence[tuple[str, float]]  # (collection item, score), best first


@dataclass(frozen=True)
class PrPoint:
    score: float
    precision: float
    recall: float


def average_precision(ranked: Ranked, relevant: set[str]) -> float:
    hits, total = 0, 0.0
    for rank, (item, _) in enumerate(ranked, 1):
        if item in relevant:
            hits += 1
            total += hits / rank
    return total / len(relevant) if relevant else 0.0


def micro_pr_curve(
    truth: Mapping[str, set[str]], rankings: Mapping[str, Ranked]
) -> tuple[float, list[PrPoint]]:
    """Micro-AP and its precision-recall curve over all pooled (query, result, score) pairs."""
    pairs = [
        (score, item in truth[query])
        for query, ranked in rankings.items()
        if query in truth
        for item, score in ranked
    ]
    pairs.sort(key=lambda pair: -pair[0])
    total = sum(len(relevant) for relevant in truth.values())
    true_positives, ap, previous_recall = 0, 0.0, 0.0
    curve: list[PrPoint] = []
    for count, (score, relevant) in enumerate(pairs, 1):
        if relevant:
            true_positives += 1
            recall = true_positives / total
            ap += (recall - previous_recall) * (true_positives / count)
            previous_recall = recall
        curve.append(PrPoint(score, true_positives / count, true_positives / total if total else 0))
    return ap, curve


def evaluate(
    truth: Mapping[str, set[str]],
    rankings: Mapping[str, Ranked],
    ks: Sequence[int] = (1, 5, 10),
    queries: Sequence[str] | None = None,
) -> dict[str, float]:
    chosen = sorted(queries if queries is not None else truth)
    sums: dict[str, float] = defaultdict(float)
    for query in chosen:
        relevant, ranked = truth[query], rankings.get(query, [])
        for k in ks:
            found = sum(1 for item, _ in ranked[:k] if item in relevant)
            sums[f"recall@{k}"] += 1.0 if found else 0.0
            sums[f"recall_all@{k}"] += found / len(relevant)
            sums[f"precision@{k}"] += found / k
        sums["mAP"] += average_precision(ranked, relevant)
    count = max(1, len(chosen))
    result = {key: round(value / count, 4) for key, value in sums.items()}
    result["queries"] = len(chosen)
    return result


def full_report(
    truth: Mapping[str, set[str]],
    rankings: Mapping[str, Ranked],
    groups: Mapping[str, str] | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, object]:
    """Overall metrics (top-level keys), micro-AP, and the breakdown per group when given."""
    report: dict[str, object] = dict(evaluate(truth, rankings, ks))
    report["uAP"] = round(micro_pr_curve(truth, rankings)[0], 4)
    by_group: dict[str, dict[str, float]] = {}
    if groups:
        members: dict[str, list[str]] = defaultdict(list)
        for query in truth:
            if query in groups:
                members[groups[query]].append(query)
        for group, queries in sorted(members.items()):
            metrics = evaluate(truth, rankings, ks, queries)
            by_group[group] = {
                key: value
                for key, value in metrics.items()
                if key.startswith("recall@") or key in ("mAP", "queries")
            }
    report["by_group"] = by_group
    return report
