"""Small pure helpers of the SQL store: canonical JSON, page tokens, prefix ranges, audit hashes."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from keycard.errors import InvalidArgument

__all__ = [
    "GENESIS_HASH",
    "chain_hash",
    "check_text",
    "decode_page_token",
    "dumps",
    "encode_page_token",
    "prefix_upper_bound",
    "rfc3339",
]

GENESIS_HASH = "0" * 64


def dumps(value: Mapping[str, Any], *, field: str = "data") -> str:
    """Canonical JSON text: sorted keys, no whitespace. Non-JSON values are an InvalidArgument."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{field} must be a JSON object of JSON values: {exc}.", field=field) from exc


def check_text(value: str | None, field: str) -> None:
    """Kinds, names and parents must be storable on every backend: no NUL (PostgreSQL text cannot hold
    it) and no lone surrogates (not encodable as UTF-8)."""
    if value is None:
        return
    if "\x00" in value:
        raise InvalidArgument(f"{field} must not contain NUL characters.", field=field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgument(f"{field} must be valid Unicode text (no lone surrogates).", field=field) from exc


def chain_hash(prev_hash: str, canonical_entry: str) -> str:
    """sha256 hex of ``prev_hash`` followed by the canonical JSON of the entry."""
    return hashlib.sha256((prev_hash + canonical_entry).encode("utf-8")).hexdigest()


def encode_page_token(last_name: str) -> str:
    return base64.urlsafe_b64encode(last_name.encode("utf-8")).decode("ascii")


def decode_page_token(token: str) -> str:
    """The last name of the previous page; InvalidArgument if the token was not made by us."""
    try:
        name = base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True).decode("utf-8")
        if "\x00" in name:
            raise ValueError("NUL in page token")
        return name
    except (UnicodeError, binascii.Error, ValueError) as exc:
        raise InvalidArgument(
            "Invalid page_token: pass the nextPageToken of the previous page unchanged, or omit it.",
            field="page_token",
        ) from exc


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix`` (code point order).

    None when there is none (the prefix is all U+10FFFF): then only the lower bound applies.
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last == 0x10FFFF:
            continue
        nxt = last + 1
        if 0xD800 <= nxt <= 0xDFFF:  # surrogates cannot be stored; skip to the next scalar value
            nxt = 0xE000
        return "".join(chars) + chr(nxt)
    return None


def rfc3339(moment: dt.datetime) -> str:
    """UTC, RFC 3339 with a Z and microseconds, e.g. 2024-05-01T12:00:00.000000Z."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
