"""Every response body has a pydantic model that OpenAPI documents, and the bodies really match them."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import Request
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from service.api import DirectRoute, create_app
from service.schemas import HealthOut, ItemChanged, ModelOut, ModelSummary, ReadyOut, RecommendRequest
from service.settings import Settings
from tests._service_helpers import item_features

TOKEN = "schema-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _app(root: Path, tmp: Path):
    return create_app(Settings(artifacts=root, redis_url=None, wal_path=tmp / "events.jsonl", admin_token=TOKEN,
                               poll_interval_s=0, cpu_threads=2))


def _ref(op: dict, status: str) -> str:
    return op["responses"][status]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]


def test_openapi_documents_health_ready_model_and_pending_item_changes(tmp_path):
    with TestClient(_app(tmp_path / "none", tmp_path)) as client:
        paths = client.get("/openapi.json").json()["paths"]
    assert _ref(paths["/healthz"]["get"], "200") == "HealthOut"
    assert _ref(paths["/readyz"]["get"], "200") == "ReadyOut"
    assert _ref(paths["/readyz"]["get"], "503") == "ReadyOut"  # not loaded: same body, status no_model
    assert _ref(paths["/model"]["get"], "200") == "ModelSummary"
    assert _ref(paths["/admin/model"]["get"], "200") == "ModelOut"
    for method in ("put", "delete"):
        op = paths["/items/{item_id}"][method]
        assert _ref(op, "200") == _ref(op, "202") == "ItemChanged"
        assert "pending" in op["responses"]["202"]["description"]


def test_recommend_body_documented_as_fastapi_documents_a_body_parameter(tmp_path):
    """/recommend parses its own body (a DirectRoute, service/api.py); its schema must still say what it accepts,
    exactly as FastAPI would write it for `body: RecommendRequest`."""

    async def documented(body: RecommendRequest) -> None:
        return None

    reference = get_openapi(title="t", version="1", routes=[APIRoute("/recommend", documented, methods=["POST"])])
    with TestClient(_app(tmp_path / "none", tmp_path)) as client:
        schema = client.get("/openapi.json").json()
    want = reference["paths"]["/recommend"]["post"]["requestBody"]
    assert schema["paths"]["/recommend"]["post"]["requestBody"] == want
    assert schema["components"]["schemas"]["RecommendRequest"] == reference["components"]["schemas"]["RecommendRequest"]
    assert _ref(schema["paths"]["/recommend"]["post"], "200") == "RecommendResponse"


def test_direct_route_refuses_parameters_it_would_never_resolve():
    async def endpoint(request: Request, k: int = 3) -> None:
        return None

    with pytest.raises(TypeError, match="exactly one parameter"):
        DirectRoute("/x", endpoint, methods=["POST"])


@pytest.fixture()
def client(tmp_path, build_artifact):
    root = tmp_path / "artifacts"
    build_artifact(root)
    with TestClient(_app(root, tmp_path)) as c:
        yield c


def test_bodies_match_their_models(client, tmp_path):
    HealthOut.model_validate_json(client.get("/healthz").content, strict=True)
    ready = ReadyOut.model_validate_json(client.get("/readyz").content, strict=True)
    assert (ready.status, ready.redis, ready.event_backlog) == ("ready", "disabled", 0)
    body = client.get("/model").json()
    assert ModelSummary.model_validate(body).model_dump(mode="json") == body  # no field dropped or added
    body = client.get("/admin/model", headers=AUTH).json()
    model = ModelOut.model_validate(body)
    assert model.model_dump(mode="json") == body
    assert set(model.indexes) == {"ip", "cosine"}
    r = client.put("/items/schema-new", json={"features": item_features(1)}, headers=AUTH)
    assert r.status_code == 200
    changed = ItemChanged.model_validate_json(r.content, strict=True)
    assert changed.pending_sync is False  # no Redis configured: nothing to wait for
    with TestClient(_app(tmp_path / "none", tmp_path)) as empty:
        r = empty.get("/readyz")
        assert r.status_code == 503
        assert ReadyOut.model_validate_json(r.content, strict=True).status == "no_model"
