"""Cursor paging for every list the API answers. A page is `limit` items after a cursor; the
answer's `nextCursor` continues it (null on the last page). A cursor is opaque to clients:
the sort key of the last item shown, with the list it belongs to, in URL-safe base64. Paging
by key rather than by offset keeps pages stable: an item added or removed meanwhile never
shifts the ones after the cursor, and none is shown twice."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import BadRequest
from .openapi import Param
from .schemas import LIMIT

T = TypeVar("T")
Key = tuple[Any, ...]
CURSOR_MAX_CHARS = 512

CURSOR = Param(
    "cursor",
    {"type": "string", "minLength": 1, "maxLength": CURSOR_MAX_CHARS, "pattern": "^[A-Za-z0-9_-]+$"},
    "Where the page starts: the nextCursor of the previous page (opaque; absent: the first page)",
)
PAGE_LIMIT = Param("limit", LIMIT, "Page size: at most this many items")
PAGE_QUERY = [CURSOR, PAGE_LIMIT]
# The sort keys of lists ordered by creation: (created_at seconds, id).
CREATED_KEY = ((int, float), str)


@dataclass(frozen=True)
class PageRequest:
    after: Key | None  # the sort key of the last item of the previous page
    limit: int


def encode_cursor(list_name: str, key: Key) -> str:
    raw = json.dumps([list_name, *key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _bad(list_name: str) -> BadRequest:
    return BadRequest(
        f"query parameter cursor is not a cursor of this list ({list_name}); "
        "give the nextCursor of a previous page, or leave it out for the first page",
        details={"errors": [{"field": "cursor", "message": "not a cursor of this list"}]},
    )


def decode(list_name: str, raw: str, kinds: Sequence[Any]) -> Key:
    """The key a cursor holds; 400 for anything that is not a cursor this list handed out."""
    try:
        value = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise _bad(list_name) from None
    if not isinstance(value, list) or len(value) != len(kinds) + 1 or value[0] != list_name:
        raise _bad(list_name)
    key = tuple(value[1:])
    for item, kind in zip(key, kinds, strict=True):
        if isinstance(item, bool) or not isinstance(item, kind):
            raise _bad(list_name)
    return key


def page_request(query: dict, list_name: str, kinds: Sequence[Any]) -> PageRequest:
    """The page a validated query asks for (`cursor` and `limit` from PAGE_QUERY)."""
    raw = query.get("cursor")
    return PageRequest(None if raw is None else decode(list_name, raw, kinds), query["limit"])


def page_of(
    items: Sequence[T],
    key: Callable[[T], Key],
    wanted: PageRequest,
    list_name: str,
    *,
    descending: bool,
) -> tuple[list[T], str | None]:
    """One page of `items` (any order) sorted by `key` (unique per item), and the next cursor."""
    ordered = sorted(items, key=key, reverse=descending)
    if wanted.after is not None:
        after = wanted.after
        ordered = [i for i in ordered if (key(i) < after if descending else key(i) > after)]
    shown = ordered[: wanted.limit]
    more = len(ordered) > wanted.limit
    return shown, encode_cursor(list_name, key(shown[-1])) if more and shown else None


def page_answer(list_key: str, items: list, next_cursor: str | None, **extra: Any) -> dict:
    """A list answer: the items, their count, the next page's cursor."""
    return {**extra, list_key: items, "count": len(items), "nextCursor": next_cursor}
