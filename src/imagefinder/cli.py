"""The `imagefinder` command line: commands over the service. Exit codes live here only."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from imagefinder.cli_support import GlobalOptionsGroup, _settings, _user_errors
from imagefinder.config import Settings
from imagefinder.threads import single_threaded_blas


@click.group(cls=GlobalOptionsGroup)
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
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    help="local: this process; ray: read, decode and embed on a Ray cluster (needs the ray extra) "
    "(default: $IMAGEFINDER_ENGINE, else local).",
)
@click.option(
    "--ray-address",
    help="The Ray cluster to use (default: $IMAGEFINDER_RAY__ADDRESS or $RAY_ADDRESS; unset: a "
    "local Ray on this machine, stopped at the end).",
)
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
    engine: str | None,
    ray_address: str | None,
) -> None:
    """Index a folder (recursively), a CSV with columns url,id, or a Parquet file (or folder of
    them) with columns url,id; re-runs are incremental."""
    from contextlib import ExitStack

    from tqdm import tqdm

    from imagefinder.index_run import IndexOptions, IndexRun
    from imagefinder.sources import FolderSource, open_source
    from imagefinder.wiring import build_fetcher, build_service, build_tracker, index_run_params

    settings = _settings(ctx)
    source = open_source(path, settings.images.max_bytes, build_fetcher(settings, allow_private=True))
    if prune is None:
        prune = isinstance(source, FolderSource)

    def committed(ids: Sequence[str]) -> None:
        for image_id in ids:
            click.echo(f"indexed {image_id}")
        sys.stdout.flush()

    if ray_address and (engine or settings.engine) != "ray":
        raise click.UsageError("--ray-address is for --engine ray")
    with ExitStack() as stack:
        ray = None
        if (engine or settings.engine) == "ray":
            ray = stack.enter_context(_ray_cluster(settings, ray_address))
        service = build_service(settings, ray)
        stack.callback(service.close)
        tracker = build_tracker(settings)
        with tqdm(unit="img", disable=quiet, file=sys.stderr, desc="indexing") as bar:
            result = IndexRun(service, tracker, settings.store_dir)(
                source,
                IndexOptions(prune, refresh, keep_files),
                index_run_params(settings, service, ray),
                progress=bar.update,
                on_commit=committed if verbose else None,
            )
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


def _ray_cluster(settings: Settings, address: str | None) -> Any:
    import os

    from imagefinder.ray_engine import RayOptions, ray_cluster

    address = address or settings.ray.address or os.environ.get("RAY_ADDRESS") or None
    ray = settings.ray
    return ray_cluster(RayOptions(address, ray.cpus, ray.encoders, ray.chunk))


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
    type=click.Choice(["single", "adaptive", "thorough"]),
    help="single: one encoder run; adaptive: a second pass with 7 more views when no copy is found "
    "and the query looks framed, pasted or turned; thorough: that pass whenever no copy is found "
    "(default: IMAGEFINDER_QUERY_VIEWS).",
)
@click.option(
    "--no-server",
    is_flag=True,
    help="Search in this process even when `imagefinder serve` is serving the same index (by default "
    "the running server answers, which spares loading the model again).",
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
    no_server: bool,
) -> None:
    """Print the k indexed images most similar to IMAGE (or matching --text), best first."""
    from imagefinder.cli_server_search import search_via_server
    from imagefinder.wiring import build_service

    if (image is None) == (text is None):
        raise click.UsageError("give an IMAGE or --text, not both")
    from imagefinder.errors import InvalidFilterError
    from imagefinder.stores.base import parse_where

    try:
        fields = parse_where(where)
    except InvalidFilterError as exc:
        raise click.UsageError(f"--{exc}") from None
    settings = _settings(ctx)
    answer = None
    if image is not None and not no_server:
        answer = search_via_server(settings, image, k, fields, views)
    if answer is None:
        service = build_service(settings)
        try:
            if text is not None:
                results = service.search_text(text, k, where=fields)
            else:
                assert image is not None
                results = service.search_bytes(image.read_bytes(), k, str(image), where=fields, views=views)  # type: ignore[arg-type]
            answer = {
                "model": {"name": service.model.name, "version": service.model.version},
                "copy_threshold": service.copy_threshold,
                "results": [r.to_dict() for r in results],
            }
        finally:
            service.close()
    if as_json:
        click.echo(json.dumps(answer, indent=1))
        return
    if not answer["results"]:
        click.echo("the index is empty")
    for rank, result in enumerate(answer["results"], 1):
        flag = "copy" if result["is_copy"] else "    "
        click.echo(f"{rank:>3}  {result['score']:.4f}  {flag}  {result['id']}")


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
    from imagefinder.wiring import open_store

    settings = _settings(ctx)
    store = open_store(settings)
    try:
        encoder = store.encoder_info
        details = {
            "images": store.count(),
            "store": store.location,
            "generation": _served_label(settings),
            "served_with": store.get_meta(SERVE_WITH) or settings.encoder,
            "search": store.index_stats(),
            "mlflow": recorded_provenance(store),
            "copy_threshold": store.search_space.copy_threshold,
            "duplicate_threshold": store.search_space.in_collection_threshold,
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
    click.echo(f"copy threshold: {details['copy_threshold']} (a query scoring at or above it is a copy)")
    click.echo(
        f"duplicate threshold: {details['duplicate_threshold']} (two indexed images scoring at or above "
        "it are copies: `imagefinder duplicates`)"
    )
    if encoder is None:
        click.echo("encoder: none yet (empty index)")
    else:
        click.echo(f"encoder: {encoder.name} v{encoder.version}, {encoder.dim}-d ({encoder.preprocessing})")
    mlflow = details["mlflow"]
    click.echo(f"model:   {mlflow['model_uri'] or 'not registered in MLflow'}")
    click.echo(f"mlflow run of the last index build: {mlflow['index_run_id'] or 'none'}")


@main.command()
@click.option("--host", default=None, help="Bind address (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default 8000).")
@click.pass_context
@_user_errors
def serve(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve the HTTP API. It answers /health at once and loads the model and the index in the
    background; /ready (and every search) answers 503 until they are loaded."""
    import logging
    import os
    import signal

    import uvicorn

    from imagefinder.api import create_app
    from imagefinder.cli_server_search import forget_server, record_server
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
    # So that `imagefinder search` on this index asks this server instead of loading it again.
    record = record_server(settings, api.host, api.port)

    def terminated(sig: int, frame: object) -> None:
        raise _Terminated

    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again: leave through the
    # `finally` below (removing the record), then end by SIGTERM as before.
    signal.signal(signal.SIGTERM, terminated)
    try:
        uvicorn.run(app, host=api.host, port=api.port, log_level="info")
    except _Terminated:
        forget_server(record)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
    finally:
        forget_server(record)


class _Terminated(BaseException):
    """SIGTERM arrived after uvicorn's own graceful shutdown."""


def _register_commands() -> None:
    from imagefinder.cli_admin import (
        demo_data,
        export_command,
        import_command,
        make_benchmark_command,
        migrate,
        models,
        runs,
    )
    from imagefinder.cli_duplicates import duplicates
    from imagefinder.cli_evaluate import evaluate
    from imagefinder.cli_models import finetune, reindex, rollback

    for command in (
        duplicates,
        evaluate,
        runs,
        models,
        migrate,
        export_command,
        import_command,
        make_benchmark_command,
        demo_data,
        finetune,
        reindex,
        rollback,
    ):
        main.add_command(command)


_register_commands()


def _served_label(settings: Settings) -> str:
    from contextlib import closing

    from imagefinder.wiring import generations

    with closing(generations(settings)) as served:
        return served.current().label
