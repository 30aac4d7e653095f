"""Cloud Storage resumable uploads (``uploadType=resumable``), as google-cloud-storage drives them.

1. ``POST /upload/storage/v1/b/B/o?uploadType=resumable`` with the object's JSON metadata (and optionally
   ``X-Upload-Content-Type`` / ``X-Upload-Content-Length``) → 200 with a ``Location`` session URI. The
   permission checks happen here, as in Google: ``storage.objects.create`` on the object, and
   ``storage.objects.delete`` when the name is taken.
2. ``PUT`` chunks to the session URI with ``Content-Range: bytes A-B/TOTAL`` (or ``/*`` while the total is
   unknown) → ``308`` with ``Range: bytes=0-N`` while incomplete; the last chunk → 200 with the object.
   ``Content-Range: bytes */TOTAL`` (or ``*/*``) with no body asks how much has been persisted (and
   finishes an upload whose bytes are all there). A chunk that starts before the persisted end (a retry)
   is trimmed; one that starts after it is a 400.

A session belongs to the principal that started it: anyone else's request gets the same 404 as an
unknown session. Its bytes go to a part file under the object store (fsync'd per chunk, so a session
survives a server restart); the object appears only when the upload completes, atomically, and a
``X-Goog-Hash`` the client sends with the last chunk is checked against the bytes received. Sessions
expire a week after they start (Google's lifetime); expired ones are removed when the next starts.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from keycard.errors import InvalidArgument, NotFound
from keycard.services.common import Caller, Services
from keycard.services.storage import (
    MAX_OBJECT_BYTES,
    _authorize,
    _blobs,
    _get_bucket,
    _object_name,
    _precondition,
    authorize_insert,
    commit_object,
    object_fields,
    object_full,
)

__all__ = ["SESSION_SECONDS", "Progress", "put_chunk", "start_session"]

SESSION_SECONDS = 7 * 24 * 3600
_CHUNK = re.compile(r"^bytes (\d{1,18})-(\d{1,18})/(\d{1,18}|\*)$")
_QUERY = re.compile(r"^bytes \*/(\d{1,18}|\*)$")
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


class Progress:
    """A PUT's outcome: ``done`` with the object's JSON, or the bytes persisted so far (for a 308)."""

    __slots__ = ("obj", "persisted")

    def __init__(self, persisted: int, obj: dict[str, Any] | None = None) -> None:
        self.persisted, self.obj = persisted, obj


def _lock(upload_id: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(upload_id, threading.Lock())


def _total(value: str | None, fld: str) -> int | None:
    if value is None or value == "" or value == "*":
        return None
    if not value.isdigit():
        raise InvalidArgument(f"Invalid {fld} {value[:40]!r}: expected a byte count.", field=fld)
    total = int(value)
    if total > MAX_OBJECT_BYTES:
        raise InvalidArgument(f"Upload of {total} bytes is over keycard's {MAX_OBJECT_BYTES} byte limit.", field=fld)
    return total


def start_session(svc: Services, caller: Caller, bucket: str, query: Mapping[str, str], body: bytes,
                  headers: Mapping[str, str], base_url: str) -> tuple[str, str]:
    """Check the caller may create (and overwrite) the object, open a session; (upload id, session URI)."""
    try:
        meta = json.loads(body) if body.strip() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidArgument("Invalid resumable upload: the body must be the object's JSON metadata.",
                              field="metadata") from None
    if not isinstance(meta, dict):
        raise InvalidArgument("Invalid resumable upload: the metadata must be a JSON object.", field="metadata")
    name = _object_name(str(meta.get("name") or query.get("name", "")))
    existing, _brec = authorize_insert(svc, caller, bucket, name)
    generation_match = query.get("ifGenerationMatch")
    _precondition(existing, generation_match)
    fields = object_fields(meta)
    total = _total(headers.get("x-upload-content-length"), "X-Upload-Content-Length")
    content_type = str(meta.get("contentType") or headers.get("x-upload-content-type") or "")
    blobs = _blobs(svc)
    now = svc.clock().timestamp()
    for old, session in list(blobs.sessions()):
        if float(session.get("expires", 0)) < now:
            blobs.drop_session(old)
    upload_id = secrets.token_urlsafe(32)
    blobs.open_session(upload_id, {
        "bucket": bucket, "name": name, "principal": caller.principal, "contentType": content_type.split(";")[0],
        "fields": fields, "total": total, "ifGenerationMatch": generation_match,
        "overwrite": existing is not None, "created": now, "expires": now + SESSION_SECONDS})
    uri = f"{base_url}/upload/storage/v1/b/{quote(bucket, safe='')}/o?uploadType=resumable&upload_id={upload_id}"
    return upload_id, uri


def _range(header: str | None, size: int) -> tuple[int, int | None, int | None]:
    """Content-Range → (first byte, last byte or None for a status query, total or None)."""
    if header is None:            # no Content-Range: the body is the whole object
        return 0, size - 1 if size else None, size
    m = _CHUNK.match(header.strip())
    if m is not None:
        first, last = int(m.group(1)), int(m.group(2))
        total = None if m.group(3) == "*" else int(m.group(3))
        if last < first or last - first + 1 != size or (total is not None and last >= total):
            raise InvalidArgument(f"Invalid Content-Range {header[:80]!r}: it must cover exactly the {size} bytes "
                                  "sent, within the total.", field="Content-Range")
        return first, last, total
    m = _QUERY.match(header.strip())
    if m is not None and size == 0:
        return 0, None, None if m.group(1) == "*" else int(m.group(1))
    raise InvalidArgument(f"Invalid Content-Range {header[:80]!r}: expected 'bytes FIRST-LAST/TOTAL', "
                          "'bytes FIRST-LAST/*' or, with an empty body, 'bytes */TOTAL'.", field="Content-Range")


def put_chunk(svc: Services, caller: Caller, bucket: str, upload_id: str, data: bytes,
              headers: Mapping[str, str], base_url: str) -> Progress:
    """Append a chunk (or answer a status query); finish the upload when every byte is there."""
    blobs = _blobs(svc)
    missing = NotFound(f"No resumable upload session {upload_id[:64]!r} for this caller in bucket {bucket}; it may "
                       "have expired: start a new upload.", field="upload_id", reason="UPLOAD_SESSION_NOT_FOUND")
    with _lock(upload_id):
        session = blobs.session(upload_id)
        if session is None or session.get("bucket") != bucket or session.get("principal") != caller.principal:
            raise missing
        if float(session.get("expires", 0)) < svc.clock().timestamp():
            blobs.drop_session(upload_id)
            raise missing
        if session.get("object") is not None:          # already complete: the answer again
            return Progress(int(session["object"].get("size", 0)), dict(session["object"]))
        first, last, total = _range(headers.get("content-range"), len(data))
        known = session.get("total")
        if total is not None and known is not None and total != known:
            raise InvalidArgument(f"Invalid Content-Range: the upload's total is {known} bytes, not {total}.",
                                  field="Content-Range")
        if total is None:
            total = known
        elif total > MAX_OBJECT_BYTES:
            raise InvalidArgument(f"Upload of {total} bytes is over keycard's {MAX_OBJECT_BYTES} byte limit.",
                                  field="Content-Range")
        persisted = blobs.persisted(upload_id)
        if last is not None:
            if first > persisted:
                raise InvalidArgument(f"Invalid Content-Range: the chunk starts at byte {first} but {persisted} "
                                      f"bytes are persisted; resume from byte {persisted}.", field="Content-Range")
            if last + 1 > MAX_OBJECT_BYTES:
                raise InvalidArgument(f"Upload is over keycard's {MAX_OBJECT_BYTES} byte limit.",
                                      field="Content-Range")
            if last + 1 > persisted:
                persisted = blobs.append(upload_id, persisted, data[persisted - first:])
        if total is not None and known is None:
            session["total"] = total
            blobs.save_session(upload_id, session)
        if total is not None and persisted > total:
            raise InvalidArgument(f"Invalid Content-Range: {persisted} bytes are persisted, more than the total "
                                  f"{total}.", field="Content-Range")
        if total is None or persisted < total:
            return Progress(persisted)
        try:
            obj = _finish(svc, caller, upload_id, session, headers.get("x-goog-hash", ""), base_url)
        except BaseException:
            blobs.drop_session(upload_id)      # nothing of it is left behind; the client starts again
            raise
        finally:
            with _locks_guard:
                _locks.pop(upload_id, None)
        session["object"] = obj
        blobs.save_session(upload_id, session)
        return Progress(persisted, obj)


def _finish(svc: Services, caller: Caller, upload_id: str, session: dict[str, Any], goog_hash: str,
            base_url: str) -> dict[str, Any]:
    blobs = _blobs(svc)
    bucket, name = str(session["bucket"]), str(session["name"])
    # storage.objects.create (and delete, for a name taken then) was checked when the session started
    existing = svc.runtime.store.get("object", f"{bucket}/{name}")
    if existing is not None and not session.get("overwrite"):      # the name was taken since
        _authorize(svc, caller, "storage.objects.delete", bucket, object_full(bucket, name))
    brec = _get_bucket(svc, bucket)
    _precondition(existing, session.get("ifGenerationMatch"))
    written = blobs.adopt_part(upload_id, bucket)
    sent = dict(p.strip().split("=", 1) for p in goog_hash.split(",") if "=" in p)
    if ("md5" in sent and sent["md5"] != written.md5) or \
            ("crc32c" in sent and written.crc32c and sent["crc32c"] != written.crc32c):
        blobs.delete(bucket, written.blob)
        blobs.drop_session(upload_id)
        raise InvalidArgument("The bytes received do not match the X-Goog-Hash sent with the last chunk; the upload "
                              "is discarded: start a new one.", field="X-Goog-Hash", reason="CHECKSUM_MISMATCH")
    return commit_object(svc, caller, brec, name, written, content_type=str(session.get("contentType") or ""),
                         fields=session.get("fields") or {}, existing=existing, base_url=base_url)
