"""What the API says about itself is true: the OpenAPI schema and the `Allow` header.

* The features of PUT /items must be exactly the served model's modalities, each with its own dim. A static
  pydantic schema can only say "a map of number lists"; `model_openapi` writes the served model's modalities
  and dims into the schema (required, exact lengths, nothing else allowed), rebuilt when the model changes.
* A method a path does not have answers 405 with an `Allow` header naming every method of that path (Starlette
  names only those of the first route whose path matched: `PUT /items/{id}` hid `DELETE`); OPTIONS answers 204
  with the same header.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from starlette.routing import Match, Route
from starlette.types import Scope

from service.model_store import ModelStore

ITEM_IN = "ItemIn"


def allowed_methods(app: FastAPI, scope: Scope) -> str:
    """The `Allow` header for the path of `scope`: the methods of every route whose path matches, and OPTIONS."""
    methods = {"OPTIONS"}
    for route in app.router.routes:
        if isinstance(route, Route) and route.methods and route.matches(scope)[0] != Match.NONE:
            methods |= route.methods
    return ", ".join(sorted(methods))


def with_modalities(schema: dict[str, Any], dims: dict[str, int], version: str) -> dict[str, Any]:
    """A copy of `schema` whose ItemIn.features names the modalities `dims` (name -> exact length)."""
    schema = copy.deepcopy(schema)
    item_in = schema.get("components", {}).get("schemas", {}).get(ITEM_IN)
    if item_in is None:
        return schema
    features = item_in["properties"]["features"]
    value = features.get("additionalProperties", {}).get("items", {"type": "number"})
    item_in["properties"]["features"] = {
        "type": "object",
        "title": features.get("title", "Features"),
        "description": f"exactly the modalities of the served model ({version}), each a list of its dim",
        "properties": {m: {"type": "array", "items": value, "minItems": d, "maxItems": d} for m, d in dims.items()},
        "required": sorted(dims),
        "additionalProperties": False,
    }
    return schema


def model_openapi(app: FastAPI, store: ModelStore) -> Callable[[], dict[str, Any]]:
    """`app.openapi` replacement: FastAPI's schema with the served model's modalities, one copy per version."""
    cached: dict[str | None, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        model = store.current
        key = model.version if model is not None else None
        if key not in cached:
            base = FastAPI.openapi(app)  # FastAPI builds the static part once and keeps it
            cached.clear()
            cached[key] = base if model is None else with_modalities(base, model.modality_dims(), model.version)
        return cached[key]

    return openapi
