"""What the API says about itself is true: the OpenAPI schema and the `Allow` header.

* What is valid depends on the served model: the features of PUT /items must be exactly its modalities, each
  with its own dim, and `fields` may name only display fields its items have. A static pydantic schema can only
  say "a map of number lists" and "a list of names"; `model_openapi` writes the served model's modalities and
  dims (required, exact lengths, nothing else allowed) and its display fields (an enum; a pattern for the
  comma-separated query parameter) into the schema, rebuilt when the model or its fields change.
* A route that reads its JSON body itself (the hot /recommend, see api._body) declares no body parameter, so
  FastAPI would not document one: `json_body` writes the requestBody FastAPI writes for `body: Model`, and
  `model_openapi` adds the model's schema to the components.
* A method a path does not have answers 405 with an `Allow` header naming every method of that path (Starlette
  names only those of the first route whose path matched: `PUT /items/{id}` hid `DELETE`); OPTIONS answers 204
  with the same header.
"""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.constants import REF_TEMPLATE
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.routing import Match, Route
from starlette.types import Scope

from service.model_store import ModelStore

ITEM_IN = "ItemIn"
RECOMMEND_REQUEST = "RecommendRequest"
SIMILAR = "/items/{item_id}/similar"


def allowed_methods(app: FastAPI, scope: Scope) -> str:
    """The `Allow` header for the path of `scope`: the methods of every route whose path matches, and OPTIONS."""
    methods = {"OPTIONS"}
    for route in app.router.routes:
        if isinstance(route, Route) and route.methods and route.matches(scope)[0] != Match.NONE:
            methods |= route.methods
    return ", ".join(sorted(methods))


def with_model(schema: dict[str, Any], dims: dict[str, int], fields: frozenset[str], version: str) -> dict[str, Any]:
    """A copy of `schema` in which PUT /items' features are the modalities `dims` (name -> exact length) and
    `fields` (of /recommend's body and /items/{id}/similar's query) may name only `fields`."""
    schema = copy.deepcopy(schema)
    components = schema.get("components", {}).get("schemas", {})
    item_in = components.get(ITEM_IN)
    if item_in is not None:
        features = item_in["properties"]["features"]
        value = features.get("additionalProperties", {}).get("items", {"type": "number"})
        item_in["properties"]["features"] = {
            "type": "object",
            "title": features.get("title", "Features"),
            "description": f"exactly the modalities of the served model ({version}), each a list of its dim",
            "properties": {m: {"type": "array", "items": value, "minItems": d, "maxItems": d}
                           for m, d in dims.items()},
            "required": sorted(dims),
            "additionalProperties": False,
        }
    names = sorted(fields)
    body_fields = components.get(RECOMMEND_REQUEST, {}).get("properties", {}).get("fields")
    if body_fields is not None:
        if names:
            body_fields["items"] = {**body_fields.get("items", {}), "enum": names}
        else:
            body_fields["maxItems"] = 0
    similar = schema.get("paths", {}).get(SIMILAR, {}).get("get", {})
    for param in similar.get("parameters", []):
        if param.get("name") == "fields":
            for branch in param["schema"].get("anyOf", [param["schema"]]):
                if branch.get("type") == "string":
                    branch["pattern"] = _names_pattern(names)
    return schema


def _names_pattern(names: list[str]) -> str:
    """A comma-separated list of `names` as service/meta.parse_fields reads it (blanks and spaces ignored)."""
    if not names:
        return r"^[\s,]*$"
    one = "(?:" + "|".join(re.escape(n) for n in names) + ")"
    return rf"^[\s,]*(?:{one}(?:\s*,[\s,]*{one})*)?[\s,]*$"


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` of a route that parses its JSON body as `model` itself: the requestBody FastAPI writes for a
    `body: model` parameter (the schema itself is added by `model_openapi`, given the same model)."""
    return {"requestBody": {"content": {"application/json": {"schema": {"$ref": REF_TEMPLATE.format(
        model=model.__name__)}}}, "required": True}}


def add_components(schema: dict[str, Any], models: tuple[type[BaseModel], ...]) -> None:
    """The schemas of `models` (and of the models they use) in `schema`'s components, exactly as FastAPI writes
    those of a body parameter: FastAPI's own generator run over one throwaway route per model (`model_json_schema`
    differs in details, e.g. a `"default": null` FastAPI leaves out). A component already there is kept."""
    if not models:
        return
    routes = []
    for i, model in enumerate(models):
        async def endpoint(**_: Any) -> None:  # never called: it only carries the signature FastAPI documents
            return None

        endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter("body", inspect.Parameter.KEYWORD_ONLY, annotation=model)])
        routes.append(APIRoute(f"/{i}", endpoint, methods=["POST"]))
    generated = get_openapi(title="bodies", version="0", routes=routes).get("components", {}).get("schemas", {})
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in models:
        for name in (model.__name__, *model.model_json_schema(ref_template=REF_TEMPLATE).get("$defs", {})):
            if name in generated:
                components.setdefault(name, generated[name])


def model_openapi(app: FastAPI, store: ModelStore, body_models: tuple[type[BaseModel], ...] = ()
                  ) -> Callable[[], dict[str, Any]]:
    """`app.openapi` replacement: FastAPI's schema with what the served model accepts, one copy per version and
    set of display fields (a PUT may add fields). `body_models`: the models of routes documented by `json_body`."""
    cached: dict[tuple[str, frozenset[str]] | None, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        model = store.current
        key = (model.version, model.overlay.meta_fields) if model is not None else None
        if key not in cached:
            base = FastAPI.openapi(app)  # FastAPI builds the static part once and keeps it
            add_components(base, body_models)
            cached.clear()
            cached[key] = base if model is None else with_model(base, model.modality_dims(),
                                                                model.overlay.meta_fields, model.version)
        return cached[key]

    return openapi
