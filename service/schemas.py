"""Request and response bodies of the HTTP API (validated at the edge, nowhere else)."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.events import EVENT_TYPE_RE

ItemId = str
MAX_K = 1000


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class RecommendRequest(_In):
    """`user_id` and/or `history`; neither gives the popularity fallback.

    `history` (most recent first) longer than MRDIB_MAX_REQUEST_HISTORY is rejected with 422;
    ids of `history` that the model does not know are ignored and listed in `unknown_items`.
    """

    user_id: str | None = Field(default=None, min_length=1, max_length=256)
    history: list[ItemId] = Field(default_factory=list)
    k: int = Field(default=20, ge=1, le=MAX_K)
    exclude_seen: bool = True
    exclude: list[ItemId] = Field(default_factory=list)
    explain: bool = False

    @field_validator("history", "exclude")
    @classmethod
    def _ids(cls, v: list[str]) -> list[str]:
        for x in v:
            if not x or len(x) > 256:
                raise ValueError("item ids must be 1..256 characters")
        return v


class ScoredItem(BaseModel):
    item_id: str
    score: float
    explain: dict[str, float] | None = Field(
        default=None, description="share of the score per MRdIB component (sums to 1); only with explain=true"
    )


class RecommendResponse(BaseModel):
    model_version: str
    items: list[ScoredItem]
    source: Literal["user", "history", "popular"]
    cached: bool
    unknown_items: list[str] = Field(default_factory=list, description="history ids ignored as unknown")


class SimilarResponse(BaseModel):
    model_version: str
    item_id: str
    items: list[ScoredItem]


class EventIn(_In):
    user_id: str = Field(min_length=1, max_length=256)
    item_id: str = Field(min_length=1, max_length=256)
    type: str = Field(pattern=EVENT_TYPE_RE, description="view, click, purchase, ... (lower-case word)")
    timestamp: datetime | None = None
    event_id: str | None = Field(default=None, min_length=1, max_length=64,
                                 description="client idempotency key; generated when absent")


class EventAccepted(BaseModel):
    event_id: str
    durable_in: Literal["redis", "wal", "file"]


class ItemIn(_In):
    """Modality features of a new or changed item: one list of floats per manifest modality."""

    features: dict[str, list[float]]

    @field_validator("features")
    @classmethod
    def _finite(cls, v: dict[str, list[float]]) -> dict[str, list[float]]:
        for name, xs in v.items():
            if not all(math.isfinite(x) for x in xs):
                raise ValueError(f"features[{name!r}] contains NaN or infinity")
        return v


class ItemChanged(BaseModel):
    model_version: str
    item_id: str
    status: Literal["indexed", "deleted"]
    side_index_size: int


class ReloadOut(BaseModel):
    status: Literal["loaded", "unchanged", "refused", "empty"]
    model_version: str | None
    candidate: str | None = None
    error: str | None = None
