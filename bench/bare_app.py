"""Baseline app of the serving benchmark: the cheapest possible /recommend on the same stack.

Same uvicorn settings, same FastAPI version, the same request model (`RecommendRequest`, so body
parsing and validation cost the same) and the same response model (`RecommendResponse`, 20 items),
but no model, no Redis, no middleware: whatever the real service costs beyond this is ours.

    uvicorn --factory bench.bare_app:create_app
"""

from __future__ import annotations

from fastapi import FastAPI

from service.schemas import RecommendRequest, RecommendResponse, ScoredItem

N_ITEMS = 20


def constant_response() -> RecommendResponse:
    """A response shaped like a real one: 20 items with realistic ids and scores."""
    items = [ScoredItem(item_id=f"i{100 + 37 * j}", score=round(12.5 - 0.173 * j, 6)) for j in range(N_ITEMS)]
    return RecommendResponse(model_version="20260101T000000Z-00000000", items=items, source="user", cached=True)


def create_app() -> FastAPI:
    app = FastAPI(title="bare baseline")
    response = constant_response()

    @app.post("/recommend", response_model=RecommendResponse, response_model_exclude_none=True)
    async def recommend(body: RecommendRequest) -> RecommendResponse:
        """Parse the request like the service does, answer a constant through the same response model."""
        return response

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "alive"}

    return app
