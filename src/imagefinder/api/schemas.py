"""Request and response bodies of the HTTP API (they also make the OpenAPI docs)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ModelInfo(BaseModel):
    name: str = Field(examples=["efficientnet-lite0"])
    version: str = Field(examples=["1"])


class Result(BaseModel):
    id: str = Field(examples=["photos/cat.jpg"])
    score: float = Field(description="Cosine similarity, -1..1; higher is more similar.", examples=[0.91])
    uri: str = Field(description="Where the indexed image was read from.")


class SearchResponse(BaseModel):
    model: ModelInfo
    took_ms: float
    results: list[Result] = Field(description="Best first; equal scores in id order.")


class Health(BaseModel):
    status: str
    version: str
    model: ModelInfo
    images: int


class AddUrl(BaseModel):
    url: str = Field(
        description="http(s) URL of the image to download and add.", examples=["https://example.org/cat.jpg"]
    )
    id: str | None = Field(None, description="Id to store it under; default: the content hash.")


class Added(BaseModel):
    id: str
    created: bool = Field(description="False when the id already held exactly these bytes.")


class ImageRecord(BaseModel):
    id: str
    payload: dict[str, Any] = Field(description="uri, hash, bytes, width, height, added_at, model, ...")
