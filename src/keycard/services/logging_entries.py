"""Logging v2 ``entries.list`` over keycard's audit log (``POST /v2/entries:list``).

The audit log is one hash-chained sequence (the installation's organization's Cloud Audit Logs). A
request names the containers it reads (``resourceNames``: ``organizations/O``, ``folders/F``,
``projects/P``); an entry belongs to a container when the resource it audits (``protoPayload.
serviceName`` + ``resourceName``) lies under it in the resource hierarchy, and it is shown with that
container's ``logName`` (``projects/P/logs/cloudaudit.googleapis.com%2Factivity``), as Google stores a
project's audit logs in the project. The organization holds every entry.

Permissions, as Google's: ``logging.logEntries.list`` on every named container (403 before anything
is read); Data Access logs (``…%2Fdata_access``) are private logs and also need
``logging.privateLogEntries.list`` — without it they are left out, and a filter that names them is a
403 naming that permission. The filter is Cloud Logging's query language (keycard.audit, the one
implementation); ``orderBy`` ``timestamp asc`` (default) or ``timestamp desc``; ``pageSize`` default
50, at most 1,000. Each page scans the log from its start (entries are not indexed by container).
"""

from __future__ import annotations

import base64
import binascii
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any

from keycard import names
from keycard.audit import compile_filter, log_entry
from keycard.errors import InvalidArgument
from keycard.services.common import Caller, Services, parse_page_size
from keycard.store.base import AuditEntry

__all__ = ["list_entries"]

SERVICE = "logging.googleapis.com"
_BATCH = 2000
_DATA_ACCESS = ("%2Fdata_access", "/data_access")


def _containers(body: Mapping[str, Any]) -> list[str]:
    raw = body.get("resourceNames")
    if raw is None and body.get("projectIds"):
        raw = [f"projects/{p}" for p in body["projectIds"]] if isinstance(body["projectIds"], list) else None
    if not isinstance(raw, list) or not raw or not all(isinstance(r, str) for r in raw):
        raise InvalidArgument("Invalid resourceNames: required, a list such as [\"projects/my-project\"] or "
                              "[\"organizations/123\"].", field="resourceNames")
    out = []
    for i, r in enumerate(raw):
        parts = r.split("/")
        if len(parts) != 2 or parts[0] not in ("projects", "folders", "organizations") or not parts[1]:
            raise InvalidArgument(f"Invalid resourceNames[{i}] {r!r}: keycard serves the audit logs of "
                                  "projects/P, folders/F and organizations/O (no billing accounts or log views).",
                                  field=f"resourceNames[{i}]")
        names.parse_resource(f"//{names.CRM}/{r}", f"resourceNames[{i}]")
        out.append(r)
    return out


def _token(order: str, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{order}:{seq}".encode()).decode()


def _parse_token(token: str, order: str) -> int | None:
    if not token:
        return None
    try:
        kind, _, seq = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if kind == order and seq.isdigit():
            return int(seq)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise InvalidArgument("Invalid pageToken: not a token of this query; send the nextPageToken of the previous "
                          "response with the same orderBy.", field="pageToken")


def _scan(svc: Services, since: int = 0) -> Iterator[AuditEntry]:
    store = svc.runtime.store
    while True:
        batch = store.audit(since_seq=since, limit=_BATCH)
        yield from batch
        if len(batch) < _BATCH:
            return
        since = batch[-1].seq


def list_entries(svc: Services, caller: Caller, body: Any) -> dict[str, Any]:
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected {\"resourceNames\": [...], \"filter\": ...}.",
                              field="body")
    containers = _containers(body)
    for r in containers:
        svc.authorize(caller, "logging.logEntries.list", f"//{names.CRM}/{r}", service=SERVICE)
    filt = body.get("filter", "") or ""
    if not isinstance(filt, str):
        raise InvalidArgument("Invalid filter: expected a string.", field="filter")
    pred = compile_filter(filt)
    order = str(body.get("orderBy") or "timestamp asc").strip().lower()
    if order not in ("timestamp asc", "timestamp desc"):
        raise InvalidArgument(f"Invalid orderBy {body.get('orderBy')!r}: use \"timestamp asc\" or "
                              "\"timestamp desc\".", field="orderBy")
    size = parse_page_size(body.get("pageSize"), 50)
    short = "asc" if order == "timestamp asc" else "desc"
    after = _parse_token(str(body.get("pageToken") or ""), short)
    private = {r: svc.allowed(caller, "logging.privateLogEntries.list", f"//{names.CRM}/{r}") for r in containers}
    if not any(private.values()) and any(d in filt for d in ("data_access", "data-access")):
        svc.authorize(caller, "logging.privateLogEntries.list", f"//{names.CRM}/{containers[0]}", service=SERVICE)
    engine = svc.runtime.engine
    org = (svc.organization or "").split("/", 3)[-1]
    canon = {r: engine.canonical_name(f"//{names.CRM}/{r}") for r in containers}
    ancestry_cache: dict[str, frozenset[str]] = {}

    def ancestors(p: Mapping[str, Any]) -> frozenset[str]:
        name = str(p.get("resourceName") or "")
        service = str(p.get("serviceName") or names.CRM)
        key = f"{service}|{name}"
        hit = ancestry_cache.get(key)
        if hit is None:
            full = name if name.startswith("//") else f"//{service}/{name}"
            try:
                hit = frozenset(engine.ancestry(full))
            except InvalidArgument:
                hit = frozenset()
            if len(ancestry_cache) > 50_000:
                ancestry_cache.clear()
            ancestry_cache[key] = hit
        return hit

    def present(a: AuditEntry) -> dict[str, Any] | None:
        e = a.entry
        log_name = str(e.get("logName", ""))
        log_id = log_name.split("/logs/", 1)[-1]
        private_log = any(d in log_name for d in _DATA_ACCESS)
        for r in containers:
            if private_log and not private[r]:
                continue
            if r == org:
                shown = r
            elif r.startswith("organizations/"):
                continue
            elif canon[r] in ancestors(e.get("protoPayload") or {}):
                shown = r
            else:
                continue
            out = log_entry(e)
            out["logName"] = f"{shown}/logs/{log_id}"
            out.setdefault("receiveTimestamp", out.get("timestamp"))
            if pred(out):
                return out
        return None

    entries: list[dict[str, Any]] = []
    token = ""
    if short == "asc":
        last = after or 0
        for a in _scan(svc, last):
            shown = present(a)
            if shown is None:
                continue
            if len(entries) == size:
                token = _token("asc", last)
                break
            entries.append(shown)
            last = a.seq
    else:
        window: deque[tuple[int, dict[str, Any]]] = deque(maxlen=size + 1)
        for a in _scan(svc):
            if after is not None and a.seq >= after:
                break
            shown = present(a)
            if shown is not None:
                window.append((a.seq, shown))
        picked = list(window)
        if len(picked) > size:
            picked = picked[1:]
            token = _token("desc", picked[0][0])
        entries = [e for _, e in reversed(picked)]
    result: dict[str, Any] = {"entries": entries} if entries else {}
    if token:
        result["nextPageToken"] = token
    return result
