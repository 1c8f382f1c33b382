"""`fields`: the display metadata of items in answers (`meta`), for /recommend, /items/{id}/similar and the page.

The records come from the served version (`item_meta.jsonl`, mrdib/item_meta.py) and from the PUTs of the
overlay (a PUT with `meta` replaces an item's fields). Only requests that ask for fields pay anything: the
lookups run after the ranking, on the already shaped answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mrdib.item_meta import FIELD_NAME_RE, MAX_FIELDS, MAX_KEY_CHARS, select_fields
from service.model_store import Overlay, ServingModel

_NAME = re.compile(FIELD_NAME_RE)


class FieldsError(ValueError):
    """`fields` names something invalid or something no item of the served version has (-> 422)."""


def parse_fields(raw: str | None) -> list[str]:
    """The names of a query parameter `fields=title,genres` (order kept, duplicates and blanks dropped)."""
    if raw is None:
        return []
    names = list(dict.fromkeys(x.strip() for x in raw.split(",") if x.strip()))
    if len(names) > MAX_FIELDS:
        raise FieldsError(f"fields: {len(names)} names, at most {MAX_FIELDS}")
    bad = [n for n in names if len(n) > MAX_KEY_CHARS or not _NAME.match(n)]
    if bad:
        raise FieldsError(f"fields: invalid field names {bad} (letters, digits, '_' or '-', starting with a letter "
                          f"or '_', at most {MAX_KEY_CHARS} characters)")
    return names


def check_fields(model: ServingModel, fields: Sequence[str]) -> None:
    """422 for a name no item has: a typo would otherwise answer silently without the field."""
    known = model.overlay.meta_fields
    unknown = [f for f in fields if f not in known]
    if unknown:
        have = ", ".join(sorted(known)) if known else "none (the catalogue carries no display metadata)"
        raise FieldsError(f"fields: unknown display fields {unknown}; the items of model {model.version} have: "
                          f"{have}")


def add_meta(items: list[dict], model: ServingModel, overlay: Overlay, fields: Sequence[str]) -> None:
    """Set `meta` (the requested fields) on each answer item and on each of its `because` items, in place."""
    for it in items:
        it["meta"] = select_fields(model.item_meta(overlay, it["item_id"]), fields)
        for b in it.get("because") or ():
            b["meta"] = select_fields(model.item_meta(overlay, b["item_id"]), fields)
