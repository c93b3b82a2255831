"""Metric code against cases computed by hand (definitions of the dev benchmark's score.py)."""

from __future__ import annotations

import pytest

from imagefinder.evaluation.metrics import average_precision, evaluate, full_report, micro_pr_curve

TRUTH = {"q1": {"a"}, "q2": {"b", "c"}, "q3": {"d"}}
RANKINGS = {
    "q1": [("a", 0.9), ("x", 0.5), ("y", 0.4)],  # relevant at rank 1
    "q2": [("x", 0.8), ("b", 0.7), ("y", 0.3), ("c", 0.2)],  # relevant at ranks 2 and 4
    # q3 has no results: it scores 0 everywhere
}


def test_average_precision_by_hand() -> None:
    assert average_precision(RANKINGS["q1"], {"a"}) == 1.0
    # (1/2 + 2/4) / 2 relevant = 0.5
    assert average_precision(RANKINGS["q2"], {"b", "c"}) == pytest.approx(0.5)
    # A relevant item never returned counts as a miss: (1/1) / 2
    assert average_precision([("a", 1.0)], {"a", "z"}) == pytest.approx(0.5)


def test_recall_precision_map_over_all_queries() -> None:
    metrics = evaluate(TRUTH, RANKINGS, ks=(1, 2, 4))
    assert metrics["recall@1"] == pytest.approx(round(1 / 3, 4))  # only q1
    assert metrics["recall@2"] == pytest.approx(round(2 / 3, 4))  # q1, q2
    assert metrics["recall_all@2"] == pytest.approx(round((1 + 0.5 + 0) / 3, 4))
    assert metrics["precision@2"] == pytest.approx(round((0.5 + 0.5 + 0) / 3, 4))
    assert metrics["recall_all@4"] == pytest.approx(round((1 + 1 + 0) / 3, 4))
    assert metrics["mAP"] == pytest.approx(round((1 + 0.5 + 0) / 3, 4))
    assert metrics["queries"] == 3


def test_micro_ap_by_hand() -> None:
    # Pooled by score: a(.9,T) x(.8,F) b(.7,T) x(.5,F) y(.4,F) y(.3,F) c(.2,T); 4 relevant in all.
    # AP = 1/4*1/1 + 1/4*2/3 + 1/4*3/7
    ap, curve = micro_pr_curve(TRUTH, RANKINGS)
    assert ap == pytest.approx(0.25 * (1 + 2 / 3 + 3 / 7))
    assert curve[0].precision == 1.0 and curve[-1].recall == pytest.approx(3 / 4)


def test_groups_break_down_the_metrics() -> None:
    report = full_report(TRUTH, RANKINGS, groups={"q1": "easy", "q2": "hard", "q3": "hard"}, ks=(1,))
    assert report["recall@1"] == pytest.approx(round(1 / 3, 4))
    assert set(report) >= {"recall@1", "mAP", "uAP", "by_group"}
    by_group = report["by_group"]
    assert by_group["easy"]["recall@1"] == 1.0 and by_group["hard"]["recall@1"] == 0.0  # type: ignore[index]
    assert by_group["hard"]["queries"] == 2  # type: ignore[index]


def test_matches_the_dev_benchmark_scorer_when_present(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Cross-check with ../shared/benchmarks/score.py on the same input, when it is present."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    scorer = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "score.py"
    if not scorer.is_file():
        pytest.skip("../shared/benchmarks is not present")
    gt = tmp_path / "gt.csv"
    gt.write_text(
        "query_file,expected_collection_file\n"
        + "".join(f"{q},{c}\n" for q, rel in TRUTH.items() for c in sorted(rel))
    )
    results = tmp_path / "results.csv"
    results.write_text(
        "query_file,rank,collection_file,score\n"
        + "".join(
            f"{q},{rank},{c},{s}\n" for q, ranked in RANKINGS.items() for rank, (c, s) in enumerate(ranked, 1)
        )
    )
    out = tmp_path / "out.json"
    subprocess.run(
        [sys.executable, str(scorer), "--gt", str(gt), "--results", str(results), "--json", str(out)],
        check=True,
        capture_output=True,
    )
    theirs = json.loads(out.read_text())["overall"]
    ours = full_report(TRUTH, RANKINGS)
    for key in ("recall@1", "recall@5", "recall@10", "precision@10", "mAP", "uAP"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-4), key
