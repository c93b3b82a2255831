"""A self-contained HTML report of an evaluation: the metrics, the worst queries as image strips
(query, what was expected, what came first) and the micro precision-recall curve as inline SVG.
Thumbnails are embedded, so the file can be mailed or archived on its own."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from PIL import Image

from imagefinder.evaluation.metrics import average_precision, micro_pr_curve
from imagefinder.evaluation.runner import Evaluation

THUMB = 128


def write_html(evaluation: Evaluation, path: Path, title: str, worst: int = 20) -> None:
    path.write_text(render_html(evaluation, title, worst), encoding="utf-8")


def render_html(evaluation: Evaluation, title: str, worst: int = 20) -> str:
    metrics = evaluation.metrics
    rows = "".join(
        f"<tr><th>{html.escape(key)}</th><td>{value}</td></tr>"
        for key, value in metrics.items()
        if key != "by_group"
    )
    groups = metrics.get("by_group") or {}
    group_rows = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{values.get('recall@1')}</td><td>{values.get('mAP')}</td>"
        f"<td>{values.get('queries')}</td></tr>"
        for name, values in groups.items()  # type: ignore[union-attr]
    )
    group_table = (
        "<h2>By group</h2><table><tr><th></th><th>recall@1</th><th>mAP</th><th>queries</th></tr>"
        f"{group_rows}</table>"
        if group_rows
        else ""
    )
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;color:#222}}table{{border-collapse:collapse}}
td,th{{padding:.2rem .6rem;border-bottom:1px solid #ddd;text-align:left}}.strip{{display:flex;gap:1rem;
margin:.6rem 0;align-items:flex-start}}figure{{margin:0;width:{THUMB}px}}figcaption{{font-size:.75rem;
word-break:break-all}}img{{max-width:{THUMB}px;max-height:{THUMB}px}}.miss{{outline:3px solid #c33}}</style>
</head><body><h1>{html.escape(title)}</h1><h2>Overall</h2><table>{rows}</table>{group_table}
<h2>Precision-recall (micro, all query-result pairs)</h2>{pr_curve_svg(evaluation)}
<h2>Worst queries</h2>{_worst_strips(evaluation, worst)}</body></html>"""


def pr_curve_svg(evaluation: Evaluation, width: int = 420, height: int = 300) -> str:
    _, curve = micro_pr_curve(evaluation.truth, evaluation.rankings)
    step = max(1, len(curve) // 400)
    points = " ".join(
        f"{40 + p.recall * (width - 50):.1f},{height - 30 - p.precision * (height - 40):.1f}"
        for p in curve[::step]
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        'aria-label="precision-recall curve">'
        f'<line x1="40" y1="{height - 30}" x2="{width - 10}" y2="{height - 30}" stroke="#888"/>'
        f'<line x1="40" y1="10" x2="40" y2="{height - 30}" stroke="#888"/>'
        f'<text x="{width // 2}" y="{height - 8}" font-size="12">recall</text>'
        f'<text x="4" y="20" font-size="12">precision</text>'
        f'<polyline fill="none" stroke="#2a6" stroke-width="2" points="{points}"/></svg>'
    )


def _worst_strips(evaluation: Evaluation, count: int) -> str:
    scored = sorted(
        evaluation.truth,
        key=lambda q: (average_precision(evaluation.rankings.get(q, []), evaluation.truth[q]), q),
    )
    strips = []
    for query in scored[:count]:
        ranked = evaluation.rankings.get(query, [])
        expected = sorted(evaluation.truth[query])[0]
        rank = next((i for i, (item, _) in enumerate(ranked, 1) if item in evaluation.truth[query]), None)
        first, score = ranked[0] if ranked else ("(no result)", 0.0)
        strips.append(
            '<div class="strip">'
            + _figure(evaluation.query_paths.get(query), f"query {query}")
            + _figure(evaluation.collection_paths.get(expected), f"expected {expected} (rank {rank or '-'})")
            + _figure(
                evaluation.collection_paths.get(first),
                f"first {first} ({score:.3f})",
                miss=first not in evaluation.truth[query],
            )
            + "</div>"
        )
    return "".join(strips)


def _figure(path: Path | None, caption: str, miss: bool = False) -> str:
    source = _thumbnail(path) if path is not None else ""
    image = (
        f'<img src="{source}" alt="{html.escape(caption)}" class="{"miss" if miss else ""}">'
        if source
        else ""
    )
    return f"<figure>{image}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _thumbnail(path: Path) -> str:
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((THUMB, THUMB))
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=80)
    except OSError:
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
