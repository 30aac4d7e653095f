"""Cloud Storage JSON API v1 routes: ``/storage/v1/…``, ``/upload/storage/v1/…``, ``/download/storage/v1/…``.

Paths and shapes as google-cloud-storage and the discovery client send them (endpoint
``http://HOST:PORT`` for google-cloud-storage, ``http://HOST:PORT/storage/v1/`` for discovery).
Uploads: ``uploadType=media`` (bytes, ``name=`` in the query), ``multipart`` (multipart/related:
JSON metadata, then the bytes) and ``resumable`` (a session, then PUT chunks: services/storage_uploads.py).
Downloads: ``alt=media`` on the object's path or its mediaLink,
with single ``Range: bytes=a-b`` requests honoured.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
from typing import Any

from starlette.responses import Response

from keycard.errors import InvalidArgument
from keycard.http.app import App, RequestContext
from keycard.http.routing import Route, Router
from keycard.services import iam_policy
from keycard.services import storage as st
from keycard.services import storage_uploads as uploads

_B = "/storage/v1/b"


def base_url(app: App, ctx: RequestContext) -> str:
    return (app.base_url or str(ctx.request.base_url)).rstrip("/")


def _multipart(body: bytes, content_type: str) -> tuple[dict[str, Any], bytes, str]:
    """(metadata, media, media content type) of a multipart/related upload."""
    if not content_type.lower().startswith("multipart/related") or "boundary=" not in content_type:
        raise InvalidArgument("Invalid multipart upload: Content-Type must be multipart/related with a boundary.",
                              field="uploadType")
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    parts = list(msg.iter_parts()) if msg.is_multipart() else []
    if len(parts) != 2:
        raise InvalidArgument("Invalid multipart upload: expected two parts, the JSON metadata and the media.",
                              field="uploadType")
    raw_meta = parts[0].get_payload(decode=True)
    try:
        meta = json.loads(raw_meta if isinstance(raw_meta, bytes) and raw_meta else b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidArgument("Invalid multipart upload: the first part must be the object's JSON metadata.",
                              field="metadata") from None
    if not isinstance(meta, dict):
        raise InvalidArgument("Invalid multipart upload: the metadata must be a JSON object.", field="metadata")
    media = parts[1].get_payload(decode=True)
    if not isinstance(media, bytes):
        media = b""
    return meta, media, parts[1].get_content_type()


def upload(app: App, ctx: RequestContext, bucket: str) -> Any:
    kind = ctx.query.get("uploadType", "")
    body: bytes = ctx.body if isinstance(ctx.body, bytes) else b""
    ctype = ctx.headers.get("content-type", "")
    if kind == "media":
        name = ctx.query.get("name", "")
        meta: dict[str, Any] = {}
        media = body
    elif kind == "multipart":
        meta, media, media_type = _multipart(body, ctype)
        name = str(meta.get("name") or ctx.query.get("name", ""))
        ctype = str(meta.get("contentType") or media_type)
    elif kind == "resumable":
        upload_id, uri = uploads.start_session(app.services, ctx.caller, bucket, ctx.query, body, ctx.headers,
                                               base_url(app, ctx))
        return Response(status_code=200, headers={"Location": uri, "X-GUploader-UploadID": upload_id})
    else:
        raise InvalidArgument(f"Invalid uploadType {kind!r}: keycard accepts media, multipart and resumable uploads "
                              "(objects up to 256 MiB).", field="uploadType")
    return st.insert_object(app.services, ctx.caller, bucket, name, media, content_type=ctype.split(";")[0],
                            metadata=meta, base_url=base_url(app, ctx),
                            if_generation_match=ctx.query.get("ifGenerationMatch"))


def resumable_put(app: App, ctx: RequestContext, bucket: str) -> Any:
    """A chunk or status query on a resumable session: 308 with the persisted range, or 200 with the object."""
    if ctx.query.get("uploadType") != "resumable" or not ctx.query.get("upload_id"):
        raise InvalidArgument("Invalid upload: PUT goes to a resumable session URI (uploadType=resumable&"
                              "upload_id=…), as returned in the Location of the POST that started it.",
                              field="upload_id")
    body: bytes = ctx.body if isinstance(ctx.body, bytes) else b""
    progress = uploads.put_chunk(app.services, ctx.caller, bucket, ctx.query["upload_id"], body, ctx.headers,
                                 base_url(app, ctx))
    if progress.obj is not None:
        return progress.obj
    headers = {"Range": f"bytes=0-{progress.persisted - 1}"} if progress.persisted else {}
    return Response(status_code=308, headers=headers)


def _range(header: str, size: int) -> tuple[int, int] | None:
    if not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[6:].partition("-")
    try:
        if first == "":
            start, end = max(0, size - int(last)), size
        else:
            start, end = int(first), (int(last) + 1 if last else size)
    except ValueError:
        return None
    return (start, min(end, size)) if start < size and start < end else None


def media(app: App, ctx: RequestContext, bucket: str, obj: str) -> Response:
    rec, blobs = st.object_media(app.services, ctx.caller, bucket, obj, ctx.query.get("generation") or None)
    size = int(rec.data.get("size", 0))
    blob = str(rec.data["keycardBlob"])
    hashes = [f"md5={rec.data['md5Hash']}"]
    if rec.data.get("crc32c"):
        hashes.insert(0, f"crc32c={rec.data['crc32c']}")
    headers = {"X-Goog-Generation": str(rec.data["generation"]), "X-Goog-Metageneration": "1",
               "X-Goog-Stored-Content-Length": str(size), "Accept-Ranges": "bytes"}
    rng = _range(ctx.headers.get("range", ""), size)
    if rng is not None:
        start, end = rng
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        return Response(blobs.read(bucket, blob, start, end), status_code=206, headers=headers,
                        media_type=str(rec.data.get("contentType")))
    headers["X-Goog-Hash"] = ",".join(hashes)
    return Response(blobs.read(bucket, blob), headers=headers, media_type=str(rec.data.get("contentType")))


def get_object(app: App, ctx: RequestContext, bucket: str, obj: str) -> Any:
    if ctx.query.get("alt") == "media":
        return media(app, ctx, bucket, obj)
    return st.get_object(app.services, ctx.caller, bucket, obj, base_url(app, ctx), ctx.query.get("generation"))


def delete_bucket(app: App, ctx: RequestContext, bucket: str) -> Response:
    st.delete_bucket(app.services, ctx.caller, bucket)
    return Response(status_code=204)


def delete_object(app: App, ctx: RequestContext, bucket: str, obj: str) -> Response:
    st.delete_object(app.services, ctx.caller, bucket, obj, ctx.query.get("generation"))
    return Response(status_code=204)


def register(router: Router) -> None:
    def add(method: str, template: str, handler: Any, op: str, permission: str = "", **kw: Any) -> None:
        router.add(Route(method, template, handler, f"storage.{op}", permission, **kw))

    add("GET", _B, lambda app, ctx: st.list_buckets(app.services, ctx.caller, ctx.query.get("project", ""),
                                                    ctx.query),
        "buckets.list", "storage.buckets.list", query=("project", "maxResults", "pageToken", "prefix"))
    add("POST", _B, lambda app, ctx: st.insert_bucket(app.services, ctx.caller, ctx.query.get("project", ""),
                                                      ctx.body),
        "buckets.insert", "storage.buckets.create", body=True, query=("project",))
    add("GET", _B + "/{bucket}", lambda app, ctx, bucket: st.get_bucket(app.services, ctx.caller, bucket),
        "buckets.get", "storage.buckets.get")
    add("DELETE", _B + "/{bucket}", delete_bucket, "buckets.delete", "storage.buckets.delete")
    add("GET", _B + "/{bucket}/iam", lambda app, ctx, bucket: st.get_bucket_iam_policy(
        app.services, ctx.caller, bucket, iam_policy.requested_version(ctx.query.get("optionsRequestedPolicyVersion"),
                                                                       "optionsRequestedPolicyVersion")),
        "buckets.getIamPolicy", "storage.buckets.getIamPolicy", query=("optionsRequestedPolicyVersion",))
    add("PUT", _B + "/{bucket}/iam", lambda app, ctx, bucket: st.set_bucket_iam_policy(
        app.services, ctx.caller, bucket, ctx.body, ctx.allow_lockout),
        "buckets.setIamPolicy", "storage.buckets.setIamPolicy", body=True)
    add("GET", _B + "/{bucket}/iam/testPermissions", lambda app, ctx, bucket: st.test_bucket_iam_permissions(
        app.services, ctx.caller, bucket, ctx.request.query_params.getlist("permissions")),
        "buckets.testIamPermissions", query=("permissions",))
    add("GET", _B + "/{bucket}/o", lambda app, ctx, bucket: st.list_objects(
        app.services, ctx.caller, bucket, ctx.query, base_url(app, ctx)),
        "objects.list", "storage.objects.list", query=("prefix", "delimiter", "maxResults", "pageToken"),
        read_log="DATA_READ")
    add("GET", _B + "/{bucket}/o/{obj=**}", get_object, "objects.get", "storage.objects.get",
        query=("alt", "generation"), read_log="DATA_READ")
    add("DELETE", _B + "/{bucket}/o/{obj=**}", delete_object, "objects.delete", "storage.objects.delete",
        query=("generation",))
    add("GET", "/download/storage/v1/b/{bucket}/o/{obj=**}", media, "objects.download", "storage.objects.get",
        query=("alt", "generation"), read_log="DATA_READ")
    add("POST", "/upload/storage/v1/b/{bucket}/o", upload, "objects.insert", "storage.objects.create",
        body=True, raw_body=True, query=("uploadType", "name", "ifGenerationMatch"))
    add("PUT", "/upload/storage/v1/b/{bucket}/o", resumable_put, "objects.resumableUpload",
        summary="A chunk (Content-Range) or status query on a resumable upload session; its permissions were "
                "checked when the session started, and it answers only the principal that started it.",
        body=True, raw_body=True, query=("uploadType", "upload_id"))
