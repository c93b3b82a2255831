"""The OpenAPI document as this server answers. What depends on its settings (k's maximum, the
batch size: the routes are declared once, before any settings exist) and on the model it serves
(text queries only for a model with a text tower) is written into the document FastAPI generates
from the routes."""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from imagefinder.config import ApiSettings


def install_openapi(app: FastAPI, settings: ApiSettings) -> None:
    """Serve `/openapi.json` (and the docs page) from `document` instead of FastAPI's default."""
    documents: dict[bool, dict[str, Any]] = {}

    def document() -> dict[str, Any]:
        service = app.state.service
        # Before the model is loaded its capabilities are unknown: describe every query kind.
        text = service is None or bool(service.supports_text)
        if text not in documents:
            generated = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            documents[text] = adapted(generated, settings, text)
        return documents[text]

    app.openapi = document  # type: ignore[method-assign]


def adapted(document: dict[str, Any], settings: ApiSettings, text: bool) -> dict[str, Any]:
    document = copy.deepcopy(document)
    for operations in document["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "k" and parameter["in"] == "query":
                    _integer_schema(parameter)["maximum"] = settings.max_k
    # No `encoding` media types on the batch's `files`: clients (schemathesis among them) read one
    # on an array as a single part; each file's refusal is an entry of the 200 answer anyway.
    batch = document["paths"]["/search/batch"]["post"]["requestBody"]["content"]["multipart/form-data"]
    form = _resolve(document, batch["schema"])
    form["properties"]["files"]["maxItems"] = settings.max_batch_files
    if not text:
        _without_text(document)
    return document


def _without_text(document: dict[str, Any]) -> None:
    json_body = document["paths"]["/search"]["post"]["requestBody"]["content"]["application/json"]
    query = _resolve(document, json_body["schema"])
    del query["properties"]["text"]
    query["oneOf"] = [branch for branch in query["oneOf"] if branch["required"] != ["text"]]
    query["description"] = (
        "Exactly one of `url` (an image to download) or `id` (an image already in the collection)."
    )
    examples = json_body.get("examples", {})
    json_body["examples"] = {name: ex for name, ex in examples.items() if "text" not in ex["value"]}


def _integer_schema(parameter: dict[str, Any]) -> dict[str, Any]:
    """The integer schema of an optional parameter (FastAPI writes anyOf [integer, null])."""
    schema: dict[str, Any] = parameter["schema"]
    for option in schema.get("anyOf", []):
        if option.get("type") == "integer":
            return option  # type: ignore[no-any-return]
    return schema


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    found: dict[str, Any] = document
    for part in ref.removeprefix("#/").split("/"):
        found = found[part]
    return found
