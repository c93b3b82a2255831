"""The `imagefinder` command line: commands over the service. Exit codes live here only."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from imagefinder.cli_support import _settings, _user_errors
from imagefinder.config import Settings
from imagefinder.threads import single_threaded_blas


@click.group()
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    help="Data directory (default ~/.imagefinder or $IMAGEFINDER_HOME).",
)
@click.option(
    "--store",
    "store_location",
    help="Folder of the index (default <home>/index or $IMAGEFINDER_STORE__PATH), or a Milvus "
    "collection: milvus://host:port/collection (or $IMAGEFINDER_STORE__URI).",
)
@click.option(
    "--model",
    help="Image encoder: efficientnet-lite0 (default, int8), efficientnet-lite0-fp32, "
    "hf:<Hugging Face id or local folder>, or a registered version models:/imagefinder-encoder/3 "
    "(or $IMAGEFINDER_ENCODER). An index stays tied to the model that built it.",
)
@click.version_option(package_name="imagefinder")
@click.pass_context
def main(ctx: click.Context, home: Path | None, store_location: str | None, model: str | None) -> None:
    """ImageFinder: index a collection of images, then find the ones that look like a query."""
    single_threaded_blas()
    overrides: dict[str, Any] = {}
    if home is not None:
        overrides["home"] = home
    if model is not None:
        overrides["encoder"] = model
    settings = Settings(**overrides)
    if store_location is not None:
        if store_location.startswith(("milvus://", "milvuss://")):
            store = settings.store.model_copy(update={"uri": store_location})
        else:
            store = settings.store.model_copy(update={"path": Path(store_location), "uri": None})
        settings = settings.model_copy(update={"store": store})
    ctx.obj = settings


@main.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--prune/--no-prune",
    default=None,
    help="Remove images of this folder or CSV that are no longer listed "
    "(default: on for folders, off for CSVs).",
)
@click.option("--refresh", is_flag=True, help="Download URLs again to catch changed content.")
@click.option(
    "--keep-files",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the originals in this folder, named by content hash.",
)
@click.option("--verbose", is_flag=True, help="Print each id once it is committed to the index.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
@_user_errors
def index(
    ctx: click.Context,
    path: Path,
    prune: bool | None,
    refresh: bool,
    keep_files: Path | None,
    verbose: bool,
    quiet: bool,
) -> None:
    """Index a folder (recursively) or a CSV with columns url,id; re-runs are incremental."""
    from tqdm import tqdm

    from imagefinder.index_run import IndexOptions, IndexRun
    from imagefinder.sources import FolderSource, open_source
    from imagefinder.wiring import build_fetcher, build_service, build_tracker, index_run_params

    settings = _settings(ctx)
    source = open_source(path, settings.images.max_bytes, build_fetcher(settings, allow_private=True))
    if prune is None:
        prune = isinstance(source, FolderSource)
    service = build_service(settings)
    tracker = build_tracker(settings)

    def committed(ids: Sequence[str]) -> None:
        for image_id in ids:
            click.echo(f"indexed {image_id}")
        sys.stdout.flush()

    try:
        with tqdm(unit="img", disable=quiet, file=sys.stderr, desc="indexing") as bar:
            result = IndexRun(service, tracker, settings.store_dir)(
                source,
                IndexOptions(prune, refresh, keep_files),
                index_run_params(settings, service),
                progress=bar.update,
                on_commit=committed if verbose else None,
            )
    finally:
        service.close()
    report = result.report
    for problem in report.problems:
        click.echo(f"{problem['category']}: {problem['where']}: {problem['reason']}", err=True)
    for warning in result.warnings:
        click.echo(f"mlflow: {warning}", err=True)
    failed = ", ".join(f"{n} {reason}" for reason, n in sorted(report.failed_by_reason.items()))
    click.echo(
        f"indexed {report.indexed}, unchanged {report.unchanged}, skipped {report.failed}"
        f"{f' ({failed})' if failed else ''}, duplicates {report.duplicates}, "
        f"pruned {report.pruned}{'' if prune else ' (pruning off)'} of {report.seen} seen "
        f"in {report.seconds:.1f} s ({report.images_per_s:.1f} images/s); "
        f"the index holds {result.count} images"
    )
    click.echo(f"report: {result.report_path}")
    if result.run_id:
        registered = f", encoder {result.model.uri}" if result.model else ""
        click.echo(f"mlflow: run {result.run_id}{registered} ({tracker.uri})")  # type: ignore[attr-defined]


@main.command()
@click.argument("image", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--text", help="Search by a description instead (CLIP-family models), e.g. 'red bicycle'.")
@click.option("-k", "k", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--where",
    multiple=True,
    metavar="FIELD=VALUE",
    help="Only images whose payload field has this value (repeat: all must match), e.g. source=holidays.",
)
@click.option(
    "--views",
    type=click.Choice(["single", "adaptive"]),
    help="single: one encoder run; adaptive: a second pass with 7 more views when no copy is found "
    "(default: IMAGEFINDER_QUERY_VIEWS).",
)
@click.pass_context
@_user_errors
def search(
    ctx: click.Context,
    image: Path | None,
    text: str | None,
    k: int,
    as_json: bool,
    where: tuple[str, ...],
    views: str | None,
) -> None:
    """Print the k indexed images most similar to IMAGE (or matching --text), best first."""
    from imagefinder.wiring import build_service

    if (image is None) == (text is None):
        raise click.UsageError("give an IMAGE or --text, not both")
    from imagefinder.errors import InvalidFilterError
    from imagefinder.stores.base import parse_where

    try:
        fields = parse_where(where)
    except InvalidFilterError as exc:
        raise click.UsageError(f"--{exc}") from None
    service = build_service(_settings(ctx))
    try:
        if text is not None:
            results = service.search_text(text, k, where=fields)
        else:
            assert image is not None
            results = service.search_bytes(image.read_bytes(), k, str(image), where=fields, views=views)  # type: ignore[arg-type]
        model = service.model
        threshold = service.copy_threshold
    finally:
        service.close()
    if as_json:
        payload = {
            "model": {"name": model.name, "version": model.version},
            "copy_threshold": threshold,
            "results": [r.to_dict() for r in results],
        }
        click.echo(json.dumps(payload, indent=1))
        return
    if not results:
        click.echo("the index is empty")
    for rank, result in enumerate(results, 1):
        click.echo(f"{rank:>3}  {result.score:.4f}  {'copy' if result.is_copy else '    '}  {result.id}")


@main.command()
@click.argument("ids", nargs=-1, required=True)
@click.pass_context
@_user_errors
def remove(ctx: click.Context, ids: tuple[str, ...]) -> None:
    """Remove images from the index by id."""
    from imagefinder.wiring import open_store

    store = open_store(_settings(ctx))
    try:
        removed = store.delete(list(ids))
    finally:
        store.close()
    click.echo(f"removed {removed} of {len(ids)}")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_user_errors
def info(ctx: click.Context, as_json: bool) -> None:
    """Show the index: image count, the encoder that built it, where it is stored."""
    from imagefinder.maintenance import recorded_provenance
    from imagefinder.reindex import SERVE_WITH
    from imagefinder.wiring import generations, open_store

    settings = _settings(ctx)
    store = open_store(settings)
    try:
        encoder = store.encoder_info
        details = {
            "images": store.count(),
            "store": store.location,
            "generation": None if settings.store.uri else generations(settings).current().label,
            "served_with": store.get_meta(SERVE_WITH) or settings.encoder,
            "search": store.index_stats(),
            "mlflow": recorded_provenance(store),
            "copy_threshold": store.search_space.copy_threshold,
            "search_space": store.search_space.describe(),
            "encoder": None
            if encoder is None
            else {
                "name": encoder.name,
                "version": encoder.version,
                "dim": encoder.dim,
                "preprocessing": encoder.preprocessing,
            },
        }
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(details, indent=1))
        return
    click.echo(f"images:  {details['images']}")
    click.echo(f"store:   {details['store']}")
    if details["generation"]:
        click.echo(f"generation: {details['generation']} (served with {details['served_with']})")
    stats = details["search"]
    if stats["kind"] == "exact":
        method = "exact"
    elif stats["kind"] == "ivf":
        method = f"approximate IVF{stats['nlist']},SQ8, nprobe {stats['nprobe']}"
    else:
        method = f"Milvus {stats['index']} at {stats['server']}/{stats['collection']}, {stats['consistency']}"
    click.echo(f"search:  {method}, {stats['dim']}-d")
    click.echo(f"copy threshold: {details['copy_threshold']} (scores at or above it are marked as copies)")
    if encoder is None:
        click.echo("encoder: none yet (empty index)")
    else:
        click.echo(f"encoder: {encoder.name} v{encoder.version}, {encoder.dim}-d ({encoder.preprocessing})")
    mlflow = details["mlflow"]
    click.echo(f"model:   {mlflow['model_uri'] or 'not registered in MLflow'}")
    click.echo(f"mlflow run of the last index build: {mlflow['index_run_id'] or 'none'}")


@main.command()
@click.option("-n", "limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.pass_context
@_user_errors
def runs(ctx: click.Context, limit: int) -> None:
    """List the MLflow runs (index builds, evaluations) and the registered encoder versions."""
    from imagefinder.wiring import mlflow_tracker

    tracker = mlflow_tracker(_settings(ctx))
    click.echo(f"tracking store: {tracker.uri}")
    for run in tracker.list_runs(limit):
        metrics = run.data.metrics
        shown = ", ".join(
            f"{key} {metrics[key]:.4g}"
            for key in ("indexed", "images_in_index", "images_per_s", "recall_at_1", "mAP", "best_epoch")
            if key in metrics
        )
        click.echo(
            f"{run.info.run_id}  {run.data.tags.get('imagefinder.kind', '?'):<8} {run.info.status:<9} "
            f"{run.info.run_name}  {shown}"
        )
    _echo_versions(tracker)


def _echo_versions(tracker: Any) -> None:
    """The registered encoder versions, each fine-tuned one with its lineage (its base, the
    training run, the fingerprint of its data, its validation before and after)."""
    click.echo(f"registered versions of {tracker.registered_model}:")
    for version in tracker.list_versions():
        tags = version.tags
        aliases = f" @{', @'.join(version.aliases)}" if getattr(version, "aliases", None) else ""
        click.echo(
            f"  v{version.version}{aliases}  {tags.get('encoder_name')} "
            f"v{tags.get('encoder_version')}  run {version.run_id}  "
            f"sha256 {tags.get('sha256', '')[:12]}"
        )
        if tags.get("kind") == "finetuned":
            scores = ", ".join(
                f"{key[len('before.') :]} {value} -> {tags.get('after.' + key[len('before.') :])}"
                for key, value in sorted(tags.items())
                if key.startswith("before.")
            )
            click.echo(
                f"      fine-tuned ({tags.get('training_mode')}) from base {tags.get('base_encoder')}"
                f"{' = ' + tags['base_model_uri'] if tags.get('base_model_uri') else ''}, "
                f"data {tags.get('data_fingerprint', '')[:12]}; validation {scores}"
            )


@main.command()
@click.option("--host", default=None, help="Bind address (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default 8000).")
@click.pass_context
@_user_errors
def serve(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve the HTTP API. It answers /health at once and loads the model and the index in the
    background; /ready (and every search) answers 503 until they are loaded."""
    import logging

    import uvicorn

    from imagefinder.api import create_app
    from imagefinder.wiring import build_service, image_limits, serving_token

    settings = _settings(ctx)
    api = settings.api.model_copy(
        update={k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app = create_app(
        lambda: build_service(settings), api, image_limits(settings), follow=serving_token(settings)
    )
    click.echo(f"ImageFinder: index {settings.store_dir}, encoder {settings.encoder}")
    click.echo(f"Serving on http://{api.host}:{api.port}  (API docs: http://{api.host}:{api.port}/docs)")
    if api.host not in ("127.0.0.1", "localhost", "::1") and not api.api_keys:
        click.echo("warning: listening beyond this machine with no API key: anyone can add and delete")
    uvicorn.run(app, host=api.host, port=api.port, log_level="info")


@main.command()
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
    from imagefinder.wiring import build_configured_encoder, service_for

    encoder = build_configured_encoder(settings)

    def make_service(store_dir: Path) -> ImageFinder:
        return service_for(settings, encoder, EmbeddedStore(store_dir))

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
            store_dir=settings.store_dir if use_index else None,
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
    from imagefinder.wiring import build_tracker, open_store

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
                    "imagefinder.index": str(settings.store_dir),
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


@main.command()
@click.option(
    "--from", "source", required=True, help="Folder of an embedded index, or milvus://host:port/collection."
)
@click.option("--to", "target", required=True, help="Where to copy it (a folder or a milvus:// URI).")
@click.pass_context
@_user_errors
def migrate(ctx: click.Context, source: str, target: str) -> None:
    """Copy an index between stores (embedded <-> Milvus) without re-embedding any image."""
    import numpy as np

    from imagefinder.maintenance import PROVENANCE_KEYS
    from imagefinder.wiring import open_store_at

    settings = _settings(ctx)
    origin = open_store_at(source, settings)
    try:
        info = origin.encoder_info
        if info is None or origin.count() == 0:
            raise click.UsageError(f"{source} holds no index")
        destination = open_store_at(target, settings)
        try:
            destination.bind_encoder(info)  # refuses a non-empty index of another encoder
            copied = 0
            for batch in origin.items():
                ids, vectors, payloads = zip(*batch, strict=True)
                destination.upsert(list(ids), np.stack(vectors), list(payloads))
                copied += len(batch)
            # The space the copy threshold was calibrated in goes with it, so `is_copy` is
            # judged on the same scale after the move; and what else the index records about
            # itself that stays true in another store.
            destination.set_search_space(origin.search_space)
            for key in PROVENANCE_KEYS:
                value = origin.get_meta(key)
                if value is not None:
                    destination.set_meta(key, value)
            destination.optimise()
            total = destination.count()
        finally:
            destination.close()
    finally:
        origin.close()
    click.echo(f"copied {copied} images from {source} to {target}; it holds {total} images")


@main.command("make-benchmark")
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--families",
    help="Comma-separated subset of: crop, rotate, flip, jpeg, color, gray, "
    "overlay, blur_lowres, paste (default: all).",
)
def make_benchmark_command(source: Path, out: Path, seed: int, families: str | None) -> None:
    """Build a near-duplicate benchmark from your own photos in SOURCE, written to OUT: one edited
    copy per family and photo, with ground_truth.csv for `imagefinder evaluate`."""
    from imagefinder.evaluation.benchmark_maker import FAMILIES, make_benchmark

    chosen = [f.strip() for f in families.split(",")] if families else None
    unknown = sorted(set(chosen or []) - set(FAMILIES))
    if unknown:
        raise click.BadParameter(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    counts = make_benchmark(source, out, seed, chosen)
    click.echo(f"{counts['originals']} photos, {counts['queries']} queries written to {out}")
    click.echo(
        f"measure it: imagefinder evaluate --collection {out}/collection --queries {out}/queries "
        f"--ground-truth {out}/ground_truth.csv --groups {out}/query_transforms.csv"
    )


@main.command()
@click.pass_context
def models(ctx: click.Context) -> None:
    """List the encoders an index can be built with, the versions registered in MLflow (with the
    lineage of fine-tuned ones), and Hugging Face models already downloaded."""
    click.echo(
        "efficientnet-lite0      the default: ImageNet EfficientNet-Lite0 (1280-d, GeM), int8, works offline"
    )
    click.echo(
        "efficientnet-lite0-fp32 the same network unquantised (indexes built before int8 was the default)"
    )
    click.echo("hf:<id or folder>       any transformers vision model: ViT (CLS or mean), CLIP and SigLIP")
    click.echo("                        (projected; text search), DINOv2 (CLS + patch mean), e.g.")
    click.echo(
        "                        hf:google/vit-base-patch16-224-in21k  hf:openai/clip-vit-base-patch32"
    )
    click.echo("                        hf:facebook/dinov2-small")
    try:
        from huggingface_hub import scan_cache_dir

        cached = sorted(repo.repo_id for repo in scan_cache_dir().repos if repo.repo_type == "model")
    except Exception:  # noqa: BLE001 - no cache yet, or huggingface_hub missing: nothing cached
        cached = []
    click.echo(f"downloaded to the Hugging Face cache: {', '.join('hf:' + c for c in cached) or 'none'}")
    click.echo("A new model needs a new index: imagefinder --model hf:... --store NEW_DIR index PATH")
    settings = _settings(ctx)
    if settings.tracking.enabled and (settings.tracking.uri or (settings.home_dir / "mlflow.db").exists()):
        from imagefinder.wiring import mlflow_tracker

        _echo_versions(mlflow_tracker(settings))
        click.echo("Serve or reindex with a registered version: imagefinder reindex --model models:/NAME/N")


@main.command("demo-data")
@click.argument("target", type=click.Path(file_okay=False, path_type=Path))
def demo_data(target: Path) -> None:
    """Write the offline demo collection (real photos shipped with scikit-image) to TARGET."""
    from imagefinder.demo import write_demo_collection

    written = write_demo_collection(target)
    click.echo(f"wrote {len(written)} demo photos to {target}")


def _register_model_commands() -> None:
    from imagefinder.cli_models import finetune, reindex, rollback

    for command in (finetune, reindex, rollback):
        main.add_command(command)


_register_model_commands()
