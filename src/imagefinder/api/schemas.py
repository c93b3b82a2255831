"""Request and response bodies of the HTTP API (they also make the OpenAPI docs)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from imagefinder.ids import id_pattern
from imagefinder.images import ACCEPTED_MEDIA_TYPES

# A where= condition, field=value, the field in the filter grammar (`stores.filters`): the
# document says what is valid.
WhereCondition = Annotated[str, StringConstraints(pattern=r"^[\w .-]{1,64}=")]


class ModelInfo(BaseModel):
    name: str = Field(examples=["efficientnet-lite0"])
    version: str = Field(examples=["1"])


class Result(BaseModel):
    id: str = Field(examples=["photos/cat.jpg"])
    score: float = Field(description="Cosine similarity, -1..1; higher is more similar.", examples=[0.91])
    uri: str = Field(description="Where the indexed image was read from.")
    is_copy: bool = Field(
        description="Score at or above this collection's calibrated copy threshold: very likely "
        "the same photo (edited, cropped, recompressed), not merely a similar one."
    )
    thumbnail_url: str = Field(description="A small JPEG of the image (long side 256 px).")
    file_url: str = Field(
        description="This API's link to the image itself.", examples=["/images/photos/cat.jpg/file"]
    )


class SearchResponse(BaseModel):
    model: ModelInfo
    took_ms: float
    copy_threshold: float = Field(description="Results scoring at or above this are marked is_copy.")
    results: list[Result] = Field(description="Best first; equal scores in id order.")


def _exactly_one_string(schema: dict[str, Any]) -> None:
    """Each property a plain string (null is refused, as by the validator) and exactly one present."""
    for prop in schema["properties"].values():
        string = next(branch for branch in prop.pop("anyOf") if branch.get("type") == "string")
        prop.pop("default", None)
        prop.update(string)
    schema["oneOf"] = [{"required": [name]} for name in schema["properties"]]


class SearchQuery(BaseModel):
    """Exactly one of `url` (an image to download), `id` (an image already in the collection) or
    `text` (a description, for models with a text tower: see `text_search` in /health)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_exactly_one_string)

    url: str | None = Field(None, description="http(s) URL of the query image.")
    id: str | None = Field(None, description="Id of an indexed image: search with its stored vector.")
    text: str | None = Field(None, max_length=1000, description="A description, e.g. 'red bicycle'.")

    @model_validator(mode="after")
    def _exactly_one(self) -> SearchQuery:
        given = [name for name in self.model_fields_set if getattr(self, name) is not None]
        if len(given) != 1 or len(self.model_fields_set) != 1:
            raise ValueError("give exactly one of url, id or text, as a string")
        return self


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    """Every error the API answers, whatever its status."""

    error: ErrorBody


class BatchItem(BaseModel):
    filename: str
    results: list[Result] = Field(default_factory=list)
    error: ErrorBody | None = None


class BatchResponse(BaseModel):
    model: ModelInfo
    took_ms: float
    queries: list[BatchItem] = Field(description="One entry per uploaded file, in order.")


class Ready(BaseModel):
    ready: bool
    images: int | None = None
    model: ModelInfo | None = None
    detail: str | None = None


class Health(BaseModel):
    status: str
    version: str
    text_search: bool = Field(False, description="Whether the model can search by a description.")
    model: ModelInfo | None = Field(None, description="None while the model is still loading.")
    images: int | None = None
    index: dict[str, Any] | None = Field(
        None,
        description="How searches run: kind (exact or ivf), dim, and for ivf nlist and nprobe.",
        examples=[{"kind": "ivf", "vectors": 1000000, "dim": 256, "nlist": 4096, "nprobe": 32}],
    )
    mlflow: dict[str, str | None] | None = Field(
        None,
        description="Provenance of the served index: the registered encoder version that built it "
        "(model_uri, model_registry_version, model_sha256), the MLflow run of its last build "
        "(index_run_id), and the registered version being served when one was named (served_model_uri).",
    )


def _documented_id_rule(schema: dict[str, Any]) -> None:
    for branch in schema["properties"]["id"]["anyOf"]:
        if branch.get("type") == "string":
            branch["pattern"] = id_pattern()


class AddUrl(BaseModel):
    model_config = ConfigDict(json_schema_extra=_documented_id_rule)

    url: str = Field(
        description="http(s) URL of the image to download and add.", examples=["https://example.org/cat.jpg"]
    )
    id: str | None = Field(None, description="Id to store it under; default: the content hash.")


def image_part(description: str) -> dict[str, Any]:
    """A multipart part that carries an image file."""
    return {"type": "string", "format": "binary", "description": description}


def id_part() -> dict[str, Any]:
    """The optional `id` part of an upload: empty means "the content hash", as leaving it out."""
    return {
        "type": "string",
        "pattern": f"^$|{id_pattern()}",
        "description": "Id to store it under; empty or left out: the content hash.",
    }


def image_encoding(*parts: str) -> dict[str, Any]:
    """The media types the image parts of a multipart body may be sent as."""
    return {part: {"contentType": ", ".join(ACCEPTED_MEDIA_TYPES)} for part in parts}


class Added(BaseModel):
    id: str
    created: bool = Field(description="True when the id is new (201).")
    replaced: bool = Field(False, description="True when the id held other bytes, now replaced (200).")


class ImageRecord(BaseModel):
    id: str
    payload: dict[str, Any] = Field(description="uri, hash, bytes, width, height, added_at, model, ...")


class ImageSummary(BaseModel):
    id: str
    uri: str
    width: int | None = None
    height: int | None = None
    thumbnail_url: str
    file_url: str


class ImagePage(BaseModel):
    total: int
    offset: int
    limit: int
    model: ModelInfo
    images: list[ImageSummary]


def multipart_or_json_body(
    parts: dict[str, Any],
    required: list[str],
    json_model: type[BaseModel],
    examples: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """OpenAPI `requestBody` of a route that takes either a multipart form or a JSON body (the
    routes parse the body themselves, so FastAPI cannot describe it on its own)."""
    json_content: dict[str, Any] = {"schema": json_model.model_json_schema()}
    if examples:
        json_content["examples"] = examples
    images = [name for name, part in parts.items() if part.get("format") == "binary"]
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": required, "properties": parts},
                    "encoding": image_encoding(*images),
                },
                "application/json": json_content,
            },
        }
    }
