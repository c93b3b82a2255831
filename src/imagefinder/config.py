"""Typed settings from environment variables (prefix `IMAGEFINDER_`, nested with `__`) and flags.

Build one `Settings` at the entry point and pass it in; nothing reads a module-global instance.
Every field has a description: docs/configuration.md is generated from them (tools/gen_docs.py).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, Field, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class ImageSettings(BaseModel):
    max_pixels: int = Field(
        60_000_000, ge=1, description="Refuse images with more pixels than this (decompression bombs)."
    )
    max_bytes: int = Field(
        50 * 1024 * 1024, ge=1, description="Refuse image files or uploads larger than this many bytes."
    )


class FetchSettingsModel(BaseModel):
    workers: int = Field(8, ge=1, le=256, description="Concurrent downloads (and file reads) while indexing.")
    timeout_s: float = Field(15.0, gt=0, description="Timeout of one HTTP request, in seconds.")
    retries: int = Field(
        2, ge=0, le=10, description="Retries after a 5xx answer or a timeout (none after a 4xx)."
    )


class StoreSettings(BaseModel):
    path: Path | None = Field(None, description="Folder of the embedded store; default `<home>/index`.")
    uri: str | None = Field(
        None,
        description="A Milvus collection instead of the embedded store: milvus://host:port/collection "
        "(milvuss:// for TLS).",
    )
    keep_generations: int = Field(
        3,
        ge=2,
        description="Index generations kept after a reindex switches to a new one: the served one "
        "and those `imagefinder rollback` can go back to; older ones are removed (the first, the "
        "index folder or collection itself, is always kept).",
    )
    exact_below: int = Field(
        20_000,
        ge=1,
        description="Collections smaller than this are searched exactly; from this size on the store "
        "switches by itself to an approximate IVF-SQ8 index (and back below half of it).",
    )
    nprobe: int = Field(
        32,
        ge=1,
        description="Lists of the approximate index scanned per query: higher finds more of the true "
        "nearest images and costs time (recall@10 0.98 at 32 on the 1M benchmark).",
    )


class TrackingSettings(BaseModel):
    enabled: bool = Field(True, description="Record every index and evaluate run in MLflow (false: off).")
    uri: str | None = Field(
        None,
        description="MLflow tracking URI; default: `MLFLOW_TRACKING_URI` when set, else "
        "`sqlite:///<home>/mlflow.db` with artifacts in `<home>/mlartifacts`.",
    )
    experiment: str = Field("imagefinder", description="MLflow experiment the runs go to.")
    registered_model: str = Field(
        "imagefinder-encoder",
        description="Name the encoder is registered under in the MLflow model registry.",
    )


def _comma_list(value: object) -> object:
    """Lists may be given in an environment variable as comma-separated text."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


CommaList = Annotated[list[str], NoDecode, BeforeValidator(_comma_list)]


class ApiSettings(BaseModel):
    host: str = Field("127.0.0.1", description="Address `imagefinder serve` binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port `imagefinder serve` listens on.")
    default_k: int = Field(3, ge=1, description="Results returned when a search names no k.")
    max_k: int = Field(100, ge=1, description="Largest k a search may ask for.")
    allow_private_urls: bool = Field(
        False,
        description="Let API requests make the server fetch loopback, private and link-local URLs.",
    )
    api_keys: CommaList = Field(
        default_factory=list,
        description="API keys (comma-separated); when set, writes need one in the X-API-Key header.",
    )
    keys_for_reads: bool = Field(False, description="Also require an API key for searches and reads.")
    cors_origins: CommaList = Field(
        default_factory=list, description="Origins allowed to call the API from a browser (CORS)."
    )
    max_batch_files: int = Field(16, ge=1, description="Most images one POST /search/batch may carry.")
    micro_batch: bool = Field(True, description="Embed concurrent queries together in one encoder call.")
    micro_batch_wait_ms: float = Field(
        0.0,
        ge=0,
        description="How long a query waits for others to share its encoder call. 0: no wait; "
        "queries that arrive while the encoder is busy still share the next call.",
    )


class RaySettings(BaseModel):
    address: str | None = Field(
        None,
        description="Ray cluster for `index --engine ray` (ray://head:10001, head:6379 or auto); "
        "`RAY_ADDRESS` is read too. Unset: a local Ray on this machine's cores, bound to 127.0.0.1, "
        "stopped when the run ends.",
    )
    cpus: int | None = Field(
        None, ge=1, description="CPUs of the local Ray cluster (default: this machine's cores)."
    )
    encoders: int | None = Field(
        None,
        ge=1,
        description="Encoder actors (one model each); default one per GPU of the cluster, else one "
        "per 4 CPUs, at least one.",
    )
    chunk: int = Field(32, ge=1, le=1024, description="Images per Ray task and per encoder-actor call.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGEFINDER_", env_nested_delimiter="__", extra="ignore")

    home: Path = Field(
        Path("~/.imagefinder"),
        description="Data directory: the index, cached ONNX models and reports live here.",
    )
    encoder: str = Field(
        "efficientnet-lite0",
        description="The image encoder: efficientnet-lite0 (int8), efficientnet-lite0-fp32, "
        "hf:<Hugging Face id or local folder>, or a "
        "registered MLflow version: models:/imagefinder-encoder/3 or models:/imagefinder-encoder@production.",
    )
    hf_pooling: str = Field(
        "auto",
        description="For hf: models: auto (CLIP/SigLIP projection, DINOv2 cls+mean, else cls), "
        "cls, mean or cls+mean.",
    )
    device: str = Field("auto", description="Where hf: models run: auto (a GPU when present), cpu or cuda.")
    batch_size: int = Field(32, ge=1, le=1024, description="Images per encoder call when indexing.")
    decode_workers: int = Field(
        2, ge=1, le=64, description="Threads decoding and preprocessing images while indexing."
    )
    query_views: Literal["single", "adaptive", "thorough"] = Field(
        "adaptive",
        description="adaptive: when a query finds no copy and looks framed, pasted or turned (a gate "
        "learned on the collection's own images decides), search again with 7 more views of it "
        "(mirrored and turned, four corners and the centre), which finds copies pasted into other "
        "pictures, screenshots and rotated copies at 8 encoder runs; other queries take 1. "
        "thorough: that second pass for every query that finds no copy. single: one encoder run "
        "per query.",
    )
    whitening: float = Field(
        0.25,
        ge=0,
        le=1,
        description="Power of the PCA-whitening learned on the collection after each index run "
        "(0: off). Used from 50 images on.",
    )
    search_dims: int = Field(
        256,
        ge=8,
        description="Whitening keeps at most this many directions: the approximate index stores one byte "
        "per direction per image.",
    )
    engine: Literal["local", "ray"] = Field(
        "local",
        description="Where `index` reads, decodes and embeds: local (this process) or ray (a Ray "
        "cluster; needs the ray extra).",
    )
    ray: RaySettings = Field(default_factory=RaySettings)
    images: ImageSettings = Field(default_factory=ImageSettings)
    fetch: FetchSettingsModel = Field(default_factory=FetchSettingsModel)
    store: StoreSettings = Field(default_factory=StoreSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)

    @model_validator(mode="after")
    def _warn_about_removed_settings(self) -> Settings:
        # Unknown IMAGEFINDER_ variables are ignored; this one was a setting until the adaptive
        # query views replaced it, so say what took its place.
        if "IMAGEFINDER_ROTATED_QUERIES" in os.environ:
            warnings.warn(
                "IMAGEFINDER_ROTATED_QUERIES is no longer read: rotated views are part of "
                "IMAGEFINDER_QUERY_VIEWS=adaptive (the default)",
                stacklevel=2,
            )
        return self

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser()

    @property
    def store_dir(self) -> Path:
        return (self.store.path or self.home_dir / "index").expanduser()

    @property
    def model_cache_dir(self) -> Path:
        return self.home_dir / "models"

    @property
    def files_dir(self) -> Path:
        """Originals of images added through the API."""
        return self.home_dir / "files"


def env_var_names(model: type[BaseModel] = Settings, prefix: str = "IMAGEFINDER_") -> list[str]:
    """All environment variables the settings read, e.g. `IMAGEFINDER_STORE__PATH`."""
    names: list[str] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names.extend(env_var_names(annotation, f"{prefix}{name.upper()}__"))
        else:
            names.append(f"{prefix}{name.upper()}")
    return names
