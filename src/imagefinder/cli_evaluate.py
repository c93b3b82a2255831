"""`imagefinder evaluate`: score the index, or two model versions side by side, on a benchmark."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from imagefinder.cli_support import _settings, _user_errors
from imagefinder.config import Settings


@click.command()
@click.option(
    "--collection",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of collection images (indexed into a temporary store).",
)
@click.option(
    "--queries",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of query images named in the ground truth.",
)
@click.option(
    "--ground-truth",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV query_file,expected_collection_file (several rows per query allowed).",
)
@click.option(
    "--groups",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV with query_file and a group column, for a breakdown per group.",
)
@click.option("--group-column", default="family", show_default=True)
@click.option(
    "--labelled",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder with one subfolder per class: leave-one-out retrieval.",
)
@click.option("--use-index", is_flag=True, help="Search the current index instead of indexing --collection.")
@click.option(
    "--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the metrics here."
)
@click.option(
    "--html",
    "html_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write an HTML report (worst queries, precision-recall curve) here.",
)
@click.option(
    "--compare",
    "compare",
    multiple=True,
    help="Also score this model (e.g. a registered version models:/imagefinder-encoder/4) on the "
    "same data in the same run, side by side with --model's; repeatable.",
)
@click.pass_context
@_user_errors
def evaluate(
    ctx: click.Context,
    collection: Path | None,
    queries: Path | None,
    ground_truth: Path | None,
    groups: Path | None,
    group_column: str,
    labelled: Path | None,
    use_index: bool,
    json_out: Path | None,
    html_out: Path | None,
    compare: tuple[str, ...],
) -> None:
    """Measure retrieval quality: recall@1/5/10, precision@k, mAP and micro-AP."""
    settings = _settings(ctx)
    if labelled is None and (
        queries is None or ground_truth is None or (collection is None and not use_index)
    ):
        raise click.UsageError(
            "give --labelled DIR, or --queries DIR --ground-truth CSV with --collection DIR or --use-index"
        )
    if compare:
        if use_index:
            raise click.UsageError(
                "--compare indexes --collection once per model; --use-index holds one model's"
            )
        from imagefinder.cli_models import compare_models

        compare_models(settings, (settings.encoder, *compare), ctx.params)
        return
    _evaluate_one(
        settings,
        collection,
        queries,
        ground_truth,
        groups,
        group_column,
        labelled,
        use_index,
        json_out,
        html_out,
    )


def _evaluate_one(
    settings: Settings,
    collection: Path | None,
    queries: Path | None,
    ground_truth: Path | None,
    groups: Path | None,
    group_column: str,
    labelled: Path | None,
    use_index: bool,
    json_out: Path | None,
    html_out: Path | None,
) -> Any:
    """Evaluate the configured model, print and track the result; returns the evaluation."""
    from imagefinder.evaluation.report import write_html
    from imagefinder.evaluation.runner import evaluate_ground_truth, evaluate_labelled, read_groups
    from imagefinder.service import ImageFinder
    from imagefinder.stores.embedded import EmbeddedStore
    from imagefinder.wiring import build_configured_encoder, build_service, service_for

    # --use-index: the served generation on whichever backend, with the model that built it
    # (after `finetune --apply` that is the fine-tuned version, not the configured one).
    served = build_service(settings) if use_index else None
    encoder = served.encoder if served is not None else build_configured_encoder(settings)

    def make_service(store_dir: Path) -> ImageFinder:
        return served if served is not None else service_for(settings, encoder, EmbeddedStore(store_dir))

    if labelled is not None:
        evaluation = evaluate_labelled(make_service, labelled)
        title = f"Leave-one-out retrieval on {labelled}"
    else:
        assert queries is not None and ground_truth is not None
        group_map = read_groups(groups, group_column) if groups else None
        evaluation = evaluate_ground_truth(
            make_service,
            None if use_index else collection,
            queries,
            ground_truth,
            group_map,
        )
        title = f"Retrieval of {queries} against {'the current index' if use_index else collection}"
    metrics = evaluation.metrics
    model = encoder.info
    click.echo(f"{title}\nencoder {model.name} v{model.version}; {metrics['queries']} queries")
    for key in ("recall@1", "recall@5", "recall@10", "precision@10", "mAP", "uAP"):
        click.echo(f"  {key:<13} {metrics[key]}")
    for group, values in (metrics.get("by_group") or {}).items():  # type: ignore[union-attr]
        click.echo(
            f"  {group:<16} recall@1 {values['recall@1']:<7} mAP {values['mAP']:<7} ({values['queries']})"
        )
    if json_out:
        body = {
            **metrics,
            "model": {"name": model.name, "version": model.version},
            "seconds": {k: round(v, 2) for k, v in evaluation.seconds.items()},
        }
        json_out.write_text(json.dumps(body, indent=1))
        click.echo(f"metrics: {json_out}")
    if html_out:
        write_html(evaluation, html_out, title)
        click.echo(f"report:  {html_out}")
    inputs = {
        "collection": collection,
        "queries": queries,
        "ground_truth": ground_truth,
        "labelled": labelled,
    }
    _track_evaluation(settings, evaluation, title, inputs, use_index)
    return evaluation


def _track_evaluation(
    settings: Settings, evaluation: Any, title: str, inputs: dict[str, Path | None], use_index: bool
) -> None:
    """One MLflow run per evaluation: metrics (per group too), the HTML report, the
    precision-recall curve, linked to the MLflow run of the index it measured."""
    import tempfile

    from imagefinder.evaluation.report import pr_curve_svg, render_html
    from imagefinder.wiring import build_tracker, open_store, served_location

    tracker = build_tracker(settings)
    if not tracker.enabled:
        return
    metrics = evaluation.metrics
    with tracker.run("evaluate", title[:200]) as run, tempfile.TemporaryDirectory() as scratch:
        run.log_params(
            {
                "encoder.setting": settings.encoder,
                "whitening": settings.whitening,
                "search_dims": settings.search_dims,
                "query_views": settings.query_views,
                "use_index": use_index,
                **{name: str(path) for name, path in inputs.items() if path is not None},
            }
        )
        flat = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        for group, values in (metrics.get("by_group") or {}).items():
            flat.update({f"{group}.{k}": float(v) for k, v in values.items() if isinstance(v, int | float)})
        flat.update({f"seconds.{k}": v for k, v in evaluation.seconds.items()})
        run.log_metrics(flat)
        if use_index:
            store = open_store(settings)
            try:
                index_run = store.get_meta("index_run_id")
            finally:
                store.close()
            run.set_tags(
                {
                    "imagefinder.index_run_id": index_run or "unknown",
                    "imagefinder.index": served_location(settings),
                }
            )
        else:
            measured = inputs.get("collection") or inputs.get("labelled")
            run.set_tags({"imagefinder.index": f"temporary index of {measured}"})
        folder = Path(scratch)
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=1))
        (folder / "report.html").write_text(render_html(evaluation, title), encoding="utf-8")
        (folder / "precision_recall.svg").write_text(pr_curve_svg(evaluation), encoding="utf-8")
        for name in ("metrics.json", "report.html", "precision_recall.svg"):
            run.log_artifact(folder / name)
    click.echo(f"mlflow: run {run.run_id}")
