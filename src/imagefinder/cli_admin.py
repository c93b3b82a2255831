"""Commands about the index and its history rather than its images: MLflow runs and model
versions, migration between stores, benchmark and demo data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from imagefinder.cli_support import _settings, _user_errors


@click.command()
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


@click.command()
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


@click.command("export")
@click.option(
    "--parquet",
    "folder",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="New folder to write part-NNNNN.parquet files into.",
)
@click.pass_context
@_user_errors
def export_command(ctx: click.Context, folder: Path) -> None:
    """Write the index's ids, vectors, payloads and model version as Parquet files."""
    from contextlib import closing

    from imagefinder.parquet_io import export_parquet
    from imagefinder.wiring import open_store

    with closing(open_store(_settings(ctx))) as store:
        written = export_parquet(store, folder)
    click.echo(f"exported {written.rows} images into {len(written.files)} Parquet files in {folder}")


@click.command("import")
@click.option(
    "--parquet",
    "folder",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="A Parquet file or folder written by `export --parquet` (or in its format).",
)
@click.pass_context
@_user_errors
def import_command(ctx: click.Context, folder: Path) -> None:
    """Add the images of Parquet files (ids, vectors, payloads) to the index without embedding
    them again; the encoder that made them must be the one configured."""
    from imagefinder.errors import EncoderMismatchError
    from imagefinder.parquet_io import import_parquet, parquet_encoder
    from imagefinder.stores.base import same_encoder
    from imagefinder.wiring import build_service

    found = parquet_encoder(folder)
    service = build_service(_settings(ctx))
    try:
        configured = service.encoder.info
        if not same_encoder(configured, found):
            raise EncoderMismatchError(
                f"the vectors in {folder} were made by {found.name} v{found.version} ({found.dim}-d), "
                f"not the configured {configured.name} v{configured.version}: use --model to choose it"
            )
        imported = import_parquet(service.store, folder)
        service.maintenance.refit()  # the search space is learned on the collection as it is now
        service.store.optimise()
        total = service.count()
    finally:
        service.close()
    click.echo(f"imported {imported} images from {folder}; the index holds {total} images")


@click.command("make-benchmark")
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


@click.command()
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


@click.command("demo-data")
@click.argument("target", type=click.Path(file_okay=False, path_type=Path))
@click.option("--photos-only", is_flag=True, help="Only the photos, without their edited copies.")
def demo_data(target: Path, photos_only: bool) -> None:
    """Write the offline demo collection to TARGET: real photos shipped with scikit-image, and
    edited copies of five of them (crops, captions, mirrors, colour, heavy JPEG)."""
    from imagefinder.demo import write_demo_collection, write_demo_edits

    written = write_demo_collection(target)
    copies = [] if photos_only else write_demo_edits(target)
    click.echo(f"wrote {len(written)} demo photos and {len(copies)} edited copies to {target}")
