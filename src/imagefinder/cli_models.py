"""The CLI commands that change which model serves the index: `finetune`, `reindex`, `rollback`.
Registered on the `imagefinder` group by `cli`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from imagefinder.cli_support import _settings, _user_errors
from imagefinder.config import Settings


@click.command()
@click.option(
    "--self-supervised", is_flag=True, help="Learn copy detection from the collection itself (no labels)."
)
@click.option(
    "--labels",
    "labels_csv",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV with columns id,label for indexed images: learn the labels as categories.",
)
@click.option(
    "--labelled",
    "labelled_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A folder with one subfolder of images per label.",
)
@click.option("--epochs", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--batch-size", type=click.IntRange(2, 4096), default=48, show_default=True)
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=3e-4, show_default=True)
@click.option(
    "--patience",
    type=click.IntRange(1, 1000),
    default=4,
    show_default=True,
    help="Stop after this many epochs without a better validation score (not before half of --epochs).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="auto: a GPU when torch sees one.",
)
@click.option(
    "--images-per-epoch",
    "min_images_per_epoch",
    type=click.IntRange(min=2),
    default=512,
    show_default=True,
    help="A small collection is cycled through until an epoch has seen this many images.",
)
@click.option(
    "--max-images",
    type=click.IntRange(min=2),
    default=5000,
    show_default=True,
    help="Train on at most this many images (held in memory at about 300 px).",
)
@click.option(
    "--loss",
    "supervised_loss",
    type=click.Choice(["supcon", "proxy"]),
    default="supcon",
    show_default=True,
    help="With labels: supervised contrastive, or a proxy softmax.",
)
@click.option(
    "--collection-weight",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Self-supervised: weight of the term that scores each edited view against the whole "
    "collection (0: against its batch only).",
)
@click.option(
    "--apply", is_flag=True, help="Then re-embed the collection with the new version and switch to it."
)
@click.option(
    "--allow-missing", is_flag=True, help="With --apply: switch even if some images cannot be read again."
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
@_user_errors
def finetune(ctx: click.Context, apply: bool, allow_missing: bool, quiet: bool, **chosen: Any) -> None:
    """Fine-tune the encoder on the indexed images; register the result in MLflow."""
    from tqdm import tqdm

    from imagefinder.errors import ModelUnavailableError

    try:
        import torch  # noqa: F401 - only to say early, and clearly, what is missing
    except ImportError:
        raise ModelUnavailableError("fine-tuning needs torch: pip install 'imagefinder[export]'") from None
    from imagefinder.finetune import FinetuneOptions, FineTuner
    from imagefinder.wiring import build_service, image_reader, mlflow_tracker

    settings = _settings(ctx)
    options = FinetuneOptions(**chosen)
    service = build_service(settings)
    tracker = mlflow_tracker(settings) if settings.tracking.enabled else _tracking_off()
    base_uri = service.maintenance.provenance().get("model_uri")
    tuner = FineTuner(
        service.store,
        image_reader(settings),
        tracker,
        service.encoder,
        base_uri,
        settings.model_cache_dir / "finetuned",
    )
    with tqdm(unit="img", disable=quiet, file=sys.stderr, desc="epoch 1") as bar:

        def progress(record: Any, seen: int, total: int) -> None:
            if record is None:
                bar.total = total
                bar.n = seen
                bar.refresh()
                return
            bar.write(
                f"epoch {record.epoch}: loss {record.loss:.4f}, validation {record.validation:.4f}, "
                f"{record.images_per_s:.1f} images/s"
            )
            bar.set_description(f"epoch {record.epoch + 1}")
            bar.reset()

        try:
            data = tuner.load(options)
            for where, why in data.skipped:
                bar.write(f"skipped: {where}: {why}", file=sys.stderr)
            report = tuner.train(data, options, progress)
        finally:
            service.close()
    click.echo(
        f"fine-tuned ({report.mode}) on {report.images} images, {report.validation_images} held out, "
        f"in {report.seconds:.0f} s; best epoch {report.best_epoch} of {len(report.history)}"
        f"{' (stopped early)' if report.stopped_early else ''}"
    )
    click.echo(f"validation {report.metric}: base {report.before:.4f} -> fine-tuned {report.after:.4f}")
    click.echo(
        f"registered {report.model_uri} ({report.info['name']} v{report.info['version']}); "
        f"mlflow run {report.run_id}"
    )
    if report.after <= report.before:
        click.echo(
            "note: the fine-tuned version does not beat the base on validation; not worth --apply", err=True
        )
    if apply and report.model_uri:
        _reindex(settings, report.model_uri, allow_missing, quiet)


@click.command()
@click.option(
    "--model", "model_uri", required=True, help="A registered version: models:/imagefinder-encoder/4."
)
@click.option("--allow-missing", is_flag=True, help="Switch even if some images cannot be read again.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
@_user_errors
def reindex(ctx: click.Context, model_uri: str, allow_missing: bool, quiet: bool) -> None:
    """Re-embed the collection with a registered model version into a new index generation, then
    switch to it (a running server follows). The old generation serves until then."""
    _reindex(_settings(ctx), model_uri, allow_missing, quiet)


@click.command()
@click.pass_context
@_user_errors
def rollback(ctx: click.Context) -> None:
    """Serve the previous index generation again (a running server follows)."""
    from contextlib import closing

    from imagefinder.wiring import generations

    with closing(generations(_settings(ctx))) as served:
        previous = served.rollback()
    click.echo(f"now serving generation {previous.label} ({previous.location})")


def _reindex(settings: Settings, model_uri: str, allow_missing: bool, quiet: bool) -> None:
    from tqdm import tqdm

    from imagefinder.wiring import build_reindexer, build_tracker, mlflow_tracker, open_store

    encoder = mlflow_tracker(settings).load_encoder(model_uri)
    current = open_store(settings)
    tracker = build_tracker(settings)
    reindexer = build_reindexer(settings, current)
    try:
        with tracker.run("index", f"reindex with {model_uri}") as run:
            with tqdm(
                unit="img", total=current.count(), disable=quiet, file=sys.stderr, desc="reindexing"
            ) as bar:
                result = reindexer.run(encoder, encoder.registered, run.run_id, bar.update, allow_missing)
            run.log_params(
                {
                    "reindex.model_uri": model_uri,
                    "reindex.generation": result.generation.label,
                    "reindex.previous": result.previous.label,
                }
            )
            run.log_metrics(
                {
                    "indexed": result.report.indexed,
                    "failed": result.report.failed,
                    "seconds": result.report.seconds,
                }
            )
    finally:
        reindexer.close()
        current.close()
    click.echo(
        f"re-embedded {result.report.indexed} images with {model_uri} into generation "
        f"{result.generation.label} in {result.report.seconds:.1f} s; now serving it "
        f"(was {result.previous.label}; `imagefinder rollback` serves that again)"
    )
    if result.retired:
        removed = ", ".join(g.label for g in result.retired)
        click.echo(
            f"removed older generations {removed} (store.keep_generations: {settings.store.keep_generations})"
        )


def _tracking_off() -> Any:
    from imagefinder.tracking import NoTracker

    return NoTracker()


COMPARED = ("recall@1", "recall@5", "recall@10", "precision@10", "mAP", "uAP")


def compare_models(settings: Settings, models: tuple[str, ...], params: dict[str, Any]) -> None:
    """`evaluate --compare`: the same evaluation once per model, then a table side by side, in
    `--json` and in one MLflow run (metrics `<n>.<metric>` for the n-th model, the table as an
    artifact)."""
    import json
    import tempfile

    from imagefinder.cli_evaluate import _evaluate_one
    from imagefinder.wiring import build_tracker

    arguments = {
        key: params[key]
        for key in (
            "collection",
            "queries",
            "ground_truth",
            "groups",
            "group_column",
            "labelled",
            "use_index",
        )
    }
    rows = []
    for model in models:
        click.echo(f"== {model}")
        evaluation = _evaluate_one(
            settings.model_copy(update={"encoder": model}), **arguments, json_out=None, html_out=None
        )
        rows.append({"model": model, **{key: evaluation.metrics.get(key) for key in COMPARED}})
    width = max(len(row["model"]) for row in rows)
    click.echo("\n" + f"{'model':<{width}}  " + "  ".join(f"{key:>12}" for key in COMPARED))
    for row in rows:
        click.echo(f"{row['model']:<{width}}  " + "  ".join(f"{_cell(row[key]):>12}" for key in COMPARED))
    if params.get("json_out"):
        Path(params["json_out"]).write_text(json.dumps({"models": rows}, indent=1))
    tracker = build_tracker(settings)
    if not tracker.enabled:
        return
    with (
        tracker.run("evaluate", f"compare {' vs '.join(models)}"[:200]) as run,
        tempfile.TemporaryDirectory() as tmp,
    ):
        run.log_params({f"model.{n}": model for n, model in enumerate(models)})
        run.log_metrics(
            {
                f"{n}.{key}": float(row[key])
                for n, row in enumerate(rows)
                for key in COMPARED
                if row[key] is not None
            }
        )
        table = Path(tmp) / "comparison.json"
        table.write_text(json.dumps({"models": rows}, indent=1))
        run.log_artifact(table)
    click.echo(f"mlflow: run {run.run_id}")


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)
