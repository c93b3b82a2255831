"""Retrieval quality: metrics, evaluation runs over a ground truth or a labelled folder, reports,
and a near-duplicate benchmark maker."""
