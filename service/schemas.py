"""Request and response bodies of the HTTP API (validated at the edge, nowhere else)."""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Annotated, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, field_validator

from mrdib.artifact.schema import IndexSpec
from mrdib.item_meta import (
    FIELD_NAME_RE,
    MAX_FIELDS,
    MAX_KEY_CHARS,
    MAX_LIST_ITEMS,
    MAX_STRING_CHARS,
    MetaValue,
    validate_fields,
)
from service.events import EVENT_TYPE_RE

# Constraints live in the type (not in a validator) so that they appear in the OpenAPI schema: clients and
# the schema fuzzer (tests/test_fault_fuzz.py) then know that "" is not an item id.
ItemId = Annotated[str, Field(min_length=1, max_length=256)]
MAX_K = 1000


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


def _integral(v: object) -> object:
    """JSON Schema's `integer` is any number without a fractional part, 553.0 included: take it as 553. Booleans
    and strings are not numbers and stay refused (by the strict int that follows)."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


# An integer as JSON Schema defines it, strictly: 5 and 5.0 are 5; 5.5, true and "5" are 422.
Integer = Annotated[StrictInt, BeforeValidator(_integral)]


# A display field name, as mrdib/item_meta.py allows them (the pattern is in the OpenAPI schema too).
FieldName = Annotated[str, Field(min_length=1, max_length=MAX_KEY_CHARS, pattern=FIELD_NAME_RE)]
MetaOut = dict[str, MetaValue]


class RecommendRequest(_In):
    """`user_id` and/or `history`; neither gives the popularity fallback.

    `history` (most recent first) longer than MRDIB_MAX_REQUEST_HISTORY is rejected with 422;
    ids of `history` that the model does not know are ignored and listed in `unknown_items`.
    Numbers and flags are strict: `"k": true`, `"k": "5"` or `"k": 5.5` are 422, not silently k=1 or 5 (pydantic's
    lax mode would coerce them, and a client bug would go unnoticed); `"k": 5.0` is the integer 5, as in JSON Schema.
    """

    user_id: str | None = Field(default=None, min_length=1, max_length=256)
    history: list[ItemId] = Field(default_factory=list)
    k: Integer = Field(default=20, ge=1, le=MAX_K)
    exclude_seen: StrictBool = True
    exclude: list[ItemId] = Field(default_factory=list)
    explain: StrictBool = Field(
        default=False,
        description="explain every score: `explain` (share per component, or `{\"popularity\": 1}` for the "
                    "popularity fallback) and `because` (the history items behind it) on each item")
    fields: list[FieldName] = Field(
        default_factory=list, max_length=MAX_FIELDS,
        description="display fields to return per item as `meta` (e.g. [\"title\", \"genres\"]); names must be "
                    "fields this model's items have (GET /model lists them: `item_meta_fields`); empty = no `meta`")


class RecommendBatchRequest(_In):
    """Several /recommend requests answered in one call (at most MRDIB_MAX_BATCH). Each element has the shape of
    a /recommend body (RecommendRequest) and is validated on its own: an invalid one gets its error in its place
    in `results`, the others are answered."""

    requests: list[dict[str, object]] = Field(
        min_length=1, description="each a /recommend request body: user_id, history, k, exclude_seen, exclude, "
                                  "explain (RecommendRequest)")


class ErrorOut(BaseModel):
    """Body of every error answer: one message naming the problem; for 422 also each field error."""

    detail: str
    errors: list[str] | None = Field(default=None, description="one message per invalid field (422 only)")


class BecauseItem(BaseModel):
    """One item of the user's history and how much of the recommended item's score it accounts for."""

    item_id: str
    share: float = Field(
        description="how much this history item pushes the score up, as a fraction of everything in the history "
                    "that pushes it up: c_h / sum over the history H of max(c_h', 0), where c_h = <u(H) - u(H "
                    "without h), v_i> is how much item i's score drops when h is left out of H (u = the "
                    "artifact's user tower, H = the history it reads, v_i = the item's vector). In (0, 1]. For a "
                    "known user served from the learned vector, the drop the tower predicts (service/explain.py)")
    meta: MetaOut | None = Field(default=None, description="the requested display fields of this history item")


class ScoredItem(BaseModel):
    item_id: str
    score: float = Field(
        description="source user/history: the inner product <user vector, item vector> (higher = better; "
                    "no fixed range). source popular: the item's share of all training interactions, in [0, 1]")
    explain: dict[str, float] | None = Field(
        default=None,
        description="only with explain=true. Personalised scores: the share of the score per MRdIB component "
                    "(GET /model `components`: collaborative, shared, unique:<modality>, synergy), i.e. "
                    "<u, component_c(i)> / <u, v_i>; the shares sum to 1 and one can be negative or above 1 when "
                    "components pull in opposite directions. Absent for items added by PUT /items (no components). "
                    "Popularity fallback: {\"popularity\": 1.0}, the reason for the item is its popularity")
    because: list[BecauseItem] | None = Field(
        default=None,
        description="only with explain=true, personalised scores: the 1-3 items of the user's history (request "
                    "history, recent events, training history; the first max_history of them, which the user "
                    "tower reads) whose presence raises this item's score most, largest first. Empty when no "
                    "history item raises it. See BecauseItem.share for the exact definition")
    meta: MetaOut | None = Field(
        default=None, description="the requested display `fields` of the item (a field the item lacks is left "
                                  "out); only when fields were requested")


class RecommendResponse(BaseModel):
    model_version: str
    items: list[ScoredItem]
    source: Literal["user", "history", "popular"] = Field(
        description="user: the user's trained or cached vector; history: the user tower over the request history "
                    "and/or the user's recent events; popular: nothing known about the user, most popular items")
    cached: bool
    unknown_items: list[str] = Field(default_factory=list, description="history ids ignored as unknown")


class BatchError(BaseModel):
    status: int = Field(description="the HTTP status this request would have got alone (422, 500)")
    detail: str
    errors: list[str] | None = Field(default=None, description="one message per invalid field (422 only)")


class BatchResult(BaseModel):
    """One answer of a batch, in the request's place: RecommendResponse's fields, or `error`."""

    items: list[ScoredItem] | None = None
    source: Literal["user", "history", "popular"] | None = None
    cached: bool | None = None
    unknown_items: list[str] | None = None
    error: BatchError | None = None


class RecommendBatchResponse(BaseModel):
    model_version: str = Field(description="every answer of the batch comes from this one version")
    results: list[BatchResult] = Field(description="one per request, in request order")


class SimilarResponse(BaseModel):
    model_version: str
    item_id: str
    items: list[ScoredItem] = Field(description="nearest items, best first; `score` is the cosine of the item "
                                                "vectors, in [-1, 1]")
    meta: MetaOut | None = Field(default=None, description="the requested display fields of `item_id` itself")


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


class EventIn(_In):
    user_id: str = Field(min_length=1, max_length=256)
    item_id: str = Field(min_length=1, max_length=256)
    type: str = Field(pattern=EVENT_TYPE_RE, description="view, click, purchase, ... (lower-case word)")
    timestamp: datetime | None = None
    event_id: str | None = Field(default=None, min_length=1, max_length=64,
                                 description="client idempotency key; generated when absent")

    @field_validator("timestamp", mode="before")
    @classmethod
    def _iso_only(cls, v: object) -> object:
        """ISO 8601 strings only, as documented: pydantic would also take a number as Unix seconds, so a
        client sending milliseconds would silently record dates 50,000 years away (a numeric *string* too)."""
        if v is not None and not isinstance(v, datetime) and not (isinstance(v, str) and _ISO_DATE.match(v)):
            raise ValueError("timestamp must be an ISO 8601 date-time string, e.g. 2026-01-31T12:00:00Z")
        return v


class EventAccepted(BaseModel):
    event_id: str
    durable_in: Literal["redis", "wal", "file"]
    duplicate: bool | None = Field(
        description="true: this user sent this event_id before (a retry); it was recorded once, nothing new was "
                    "stored. false: recorded now. null: not known yet (kept in the local WAL or file while Redis is "
                    "away; a duplicate is dropped when the WAL is replayed)")


# Largest |feature value| PUT /items accepts. Features are embeddings and standardised descriptors (the shipped
# data: |x| < 5; CNN image features: < 100); values far beyond that are a client bug or an attack, and they made
# the item tower overflow float32 (an item scoring 2.9e36 on top of every list).
MAX_FEATURE_ABS = 1e6
FeatureValue = Annotated[StrictFloat, Field(ge=-MAX_FEATURE_ABS, le=MAX_FEATURE_ABS)]


# The bounds of mrdib/item_meta.validate_fields written as types, so that the schema says what is accepted (the
# validator below still runs first, for its messages): a field name that is not "id", strings and lists bounded.
MetaKey = Annotated[str, Field(min_length=1, max_length=MAX_KEY_CHARS, pattern=r"^(?!id$)[A-Za-z_][A-Za-z0-9_\-]*$")]
MetaString = Annotated[str, Field(max_length=MAX_STRING_CHARS)]
MetaValueIn = Union[MetaString, int, float, bool, None, Annotated[list[MetaString], Field(max_length=MAX_LIST_ITEMS)]]  # noqa: UP007
MetaIn = Annotated[dict[MetaKey, MetaValueIn],
                   Field(max_length=MAX_FIELDS, json_schema_extra={"additionalProperties": False})]


class ItemIn(_In):
    """Modality features of a new or changed item: one list of numbers per modality of the served model, each
    exactly that modality's dim long (the served model's modalities and dims are in this schema and in
    GET /admin/model). Values are finite with |x| <= 1e6 (`MAX_FEATURE_ABS`); strict: `true` or `"1.5"` are 422,
    not 1.0 and 1.5. The item tower's output must pass the same check as every loaded vector, or the PUT is 422.
    Optionally the item's display fields (`meta`)."""

    model_config = ConfigDict(extra="forbid", regex_engine="python-re")  # MetaKey's pattern has a lookahead

    features: dict[str, list[FeatureValue]]
    meta: MetaIn | None = Field(
        default=None,
        description="display fields of the item (title, url, price, ...: strings, numbers, booleans, null or lists "
                    f"of strings; at most {MAX_FIELDS} fields). Replace the catalogue's fields of a known item; "
                    "absent: a known item keeps its catalogue fields, a new one has none")

    @field_validator("meta", mode="before")
    @classmethod
    def _meta_bounds(cls, v: object) -> object:
        """The bounds every metadata record obeys (mrdib/item_meta.py), with one message naming the field."""
        return None if v is None else validate_fields(v, "meta")

    @field_validator("features", mode="before")
    @classmethod
    def _finite(cls, v: object) -> object:
        """NaN and infinity named as such (the range check alone would say "less than or equal to 1e6")."""
        if isinstance(v, dict):
            for name, xs in v.items():
                if isinstance(xs, list) and any(isinstance(x, float) and not math.isfinite(x) for x in xs):
                    raise ValueError(f"features[{name!r}] contains NaN or infinity")
        return v


class ItemChanged(BaseModel):
    model_version: str
    item_id: str
    status: Literal["indexed", "deleted"]
    side_index_size: int
    pending_sync: bool = Field(
        default=False,
        description="true (HTTP 202): Redis was down, so the change is applied by this worker (and the workers of "
                    "its host), kept durably in the local item WAL and replayed into Redis when it is back; the "
                    "workers of other hosts see it then. false (HTTP 200): in Redis, every worker applies it "
                    "within MRDIB_ITEM_SYNC_INTERVAL_S")


class HealthOut(BaseModel):
    status: Literal["alive"]


class ReadyOut(BaseModel):
    """Body of /readyz, 200 (a model is loaded) and 503 (none yet) alike. Redis is reported, never a reason to be
    unready: without it the service computes locally."""

    status: Literal["ready", "no_model"]
    model_version: str | None
    redis: Literal["ok", "degraded", "error", "disabled"] = Field(
        description="ok; degraded: unreachable (served locally, events in the WAL); error: reachable but answering "
                    "errors to some operation (e.g. CROSSSLOT: a cluster with MRDIB_REDIS_MODE=single), handled like "
                    "degraded; disabled: REDIS_URL unset")
    redis_error: str | None = Field(default=None, description="while not ok: the operation and Redis's error")
    event_backlog: int = Field(description="accepted events in the local WAL, not yet in Redis")


class ModelSummary(BaseModel):
    """The served version, as anyone may see it (GET /model): no file paths, devices or refusal reasons."""

    model_version: str
    created_at: str = Field(description="ISO 8601")
    n_users: int
    n_items: int
    side_index_size: int = Field(description="items added by PUT and not yet in a trained version")
    hidden_items: int = Field(description="items hidden by DELETE")
    metrics: dict[str, dict[str, float]] = Field(description="split -> metric -> value, from the export")
    components: list[str] = Field(description="score components of `explain` (collaborative, shared, "
                                              "unique:<modality>, synergy)")
    item_meta_fields: list[str] = Field(
        description="display fields the items have (what `fields` may ask for), PUT items' included; "
                    "empty when the catalogue carries no metadata")


class ModelOut(BaseModel):
    """Summary of the served version's manifest, plus what this process really runs it on (GET /admin/model)."""

    model_version: str
    created_at: str = Field(description="ISO 8601")
    backbone: str
    mrdib: bool = Field(description="trained with the MRdIB plug-in")
    modalities: dict[str, int] = Field(description="modality name -> feature dim (what PUT /items expects)")
    embedding_dim: int
    n_users: int
    n_items: int
    max_history: int
    components: list[str] = Field(description="score components of `explain`")
    item_meta_fields: list[str] = Field(
        description="display fields the items have (what `fields` may ask for), PUT items' included; "
                    "empty when the catalogue carries no metadata")
    metrics: dict[str, dict[str, float]] = Field(description="split -> metric -> value, from the export")
    indexes: dict[str, IndexSpec]
    onnx_providers: dict[str, list[str]] = Field(description="tower -> execution providers really active")
    faiss_device: str
    gpus_visible_to_faiss: int
    side_index_size: int = Field(description="items added by PUT and not yet in a trained version")
    hidden_items: int = Field(description="items hidden by DELETE")
    refused_versions: dict[str, str] = Field(description="version -> why it failed verification (names files)")


class ReloadOut(BaseModel):
    status: Literal["loaded", "unchanged", "refused", "empty"]
    model_version: str | None
    candidate: str | None = None
    error: str | None = None
