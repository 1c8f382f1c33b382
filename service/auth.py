"""Who may call what: bearer tokens of the admin, events and metrics routes (see SECURITY.md).

| routes | token |
|---|---|
| PUT/DELETE /items, POST /admin/*, GET /admin/* | MRDIB_ADMIN_TOKEN (unset: these routes answer 403) |
| POST /events | MRDIB_EVENTS_TOKEN or the admin token (unset: open, for local use; warned at start) |
| GET /metrics | MRDIB_METRICS_TOKEN or the admin token (unset: public, for a private network) |
| everything else (/recommend, /similar, /model, /healthz, /readyz, /docs) | none |

Tokens travel only in the `Authorization: Bearer` header, never in a URL (URLs end up in logs and proxies).
"""

from __future__ import annotations

import hmac

import structlog
from fastapi import Header, HTTPException, Request
from pydantic import SecretStr

from service.settings import SECRET_FIELDS, Settings

log = structlog.get_logger("mrdib.service.auth")

# Shorter tokens are accepted (a local setup), with a warning at start.
MIN_TOKEN_CHARS = 16


def _bearer(authorization: str | None) -> str | None:
    scheme, _, given = (authorization or "").partition(" ")
    return given.strip() if scheme.lower() == "bearer" and given.strip() else None


def check_bearer(authorization: str | None, kind: str, *accepted: SecretStr | None) -> None:
    """401 without a bearer token, 403 when it matches none of the `accepted` tokens (constant-time compare of
    every token, so the time does not tell which one came close). `kind` names the token in the messages."""
    given = _bearer(authorization)
    if given is None:
        raise HTTPException(401, f"{kind} token required: send 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})
    ok = False
    for token in accepted:
        if token is not None:
            ok |= hmac.compare_digest(given.encode(), token.get_secret_value().encode())
    if not ok:
        raise HTTPException(403, f"invalid {kind} token")


def _settings(request: Request) -> Settings:
    return request.app.state.ctx.settings


async def admin_dep(request: Request, authorization: str | None = Header(default=None)) -> None:
    """Admin bearer token. No configured token: admin routes are disabled (403)."""
    s = _settings(request)
    if s.admin_token is None:
        raise HTTPException(403, "admin routes are disabled: set MRDIB_ADMIN_TOKEN to enable them")
    check_bearer(authorization, "admin", s.admin_token)


async def events_dep(request: Request, authorization: str | None = Header(default=None)) -> None:
    """With MRDIB_EVENTS_TOKEN set, /events needs it (or the admin token); unset, /events is open."""
    s = _settings(request)
    if s.events_token is not None:
        check_bearer(authorization, "events", s.events_token, s.admin_token)


async def metrics_dep(request: Request, authorization: str | None = Header(default=None)) -> None:
    """With MRDIB_METRICS_TOKEN set, /metrics needs it (or the admin token); unset, /metrics is public."""
    s = _settings(request)
    if s.metrics_token is not None:
        check_bearer(authorization, "metrics", s.metrics_token, s.admin_token)


def log_access_rules(s: Settings) -> None:
    """At start: say which routes are open that production would close, and which tokens are weak."""
    if s.events_token is None:
        log.warning("events_open", detail="MRDIB_EVENTS_TOKEN is unset: anyone who reaches POST /events can write "
                                          "events for any user; set it in production (see SECURITY.md)")
    for name in SECRET_FIELDS:
        token: SecretStr | None = getattr(s, name)
        if token is not None and len(token.get_secret_value()) < MIN_TOKEN_CHARS:
            log.warning("weak_token", variable=f"MRDIB_{name.upper()}",
                        detail=f"shorter than {MIN_TOKEN_CHARS} characters; use e.g. `openssl rand -hex 32`")
