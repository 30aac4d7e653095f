"""Cloud Storage JSON API v1 (a subset): buckets, bucket IAM, objects.

Buckets are hierarchy nodes (kind ``resource``, ``//storage.googleapis.com/projects/_/buckets/B``
under their project); objects are records of kind ``object`` named ``BUCKET/NAME`` whose data are
Google's Object JSON plus the file that holds the bytes (:mod:`keycard.storage.blobs`). Objects are
not nodes: a check on ``…/buckets/B/objects/O`` walks up from the bucket, so IAM Conditions on
``resource.name`` see the object's name. Buckets use uniform bucket-level access (IAM only, no ACLs).

A new bucket's policy is Google's default: the project's owners and editors (``projectOwner:P``,
``projectEditor:P``) hold legacyBucketOwner and legacyObjectOwner, its viewers legacyBucketReader and
legacyObjectReader.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

from keycard.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from keycard.runtime import etag_for
from keycard.services import iam_policy
from keycard.services.common import Caller, Services, parse_page_size, rfc3339
from keycard.services.remedy import grant_command
from keycard.storage.blobs import BlobStore, Written
from keycard.store.base import Delete, Expect, Put, Record

__all__ = ["SERVICE", "bucket_full", "grant_bucket_access", "object_full"]

SERVICE = "storage.googleapis.com"
MAX_OBJECT_BYTES = 256 * 1024 * 1024
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]$|^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_IP_LIKE = re.compile(r"^\d+\.\d+\.\d+\.\d+$")


def bucket_full(bucket: str) -> str:
    return f"//{SERVICE}/projects/_/buckets/{bucket}"


def object_full(bucket: str, name: str) -> str:
    return f"//{SERVICE}/projects/_/buckets/{bucket}/objects/{name}"


# The smallest predefined bucket roles holding each storage permission (the grant commands keycard prints).
GRANTING_ROLE = {"storage.buckets.list": "roles/storage.bucketViewer",
                 "storage.objects.get": "roles/storage.objectViewer",
                 "storage.objects.list": "roles/storage.objectViewer",
                 "storage.objects.create": "roles/storage.objectCreator",
                 "storage.objects.delete": "roles/storage.objectUser"}


def grant_bucket_access(bucket: str, member: str, permissions: Iterable[str]) -> str:
    """The command(s) granting ``member`` the smallest predefined roles on ``bucket`` that hold ``permissions``."""
    roles = dict.fromkeys(GRANTING_ROLE.get(p, "roles/storage.objectUser") for p in permissions)
    return " && ".join(str(grant_command(bucket_full(bucket), member, role)) for role in roles)


def _blobs(svc: Services) -> BlobStore:
    if svc.blobs is None:
        raise Unavailable("Object storage is not configured on this server (start it with --objects-dir).",
                          reason="STORAGE_DISABLED")
    return svc.blobs


def _authorize(svc: Services, caller: Caller, permission: str, bucket: str, full: str) -> None:
    """Check ``permission`` on a bucket or object; a bucket that does not exist has no ancestry, so it is
    checked as if it sat directly under the organization: who may see every bucket learns it is missing
    (404), anyone else gets the same 403 as for a bucket they may not see."""
    if svc.runtime.store.get("resource", bucket_full(bucket)) is None and svc.organization is not None:
        svc.authorize(caller, permission, svc.organization, service=SERVICE, shown=full)
        return
    svc.authorize(caller, permission, full, service=SERVICE)


def _bucket_name(value: object, fld: str = "bucket") -> str:
    if not isinstance(value, str) or not _BUCKET_RE.match(value) or ".." in value or _IP_LIKE.match(value) \
            or value.startswith("goog") or "google" in value or (len(value) > 63 and "." not in value):
        raise InvalidArgument(f"Invalid {fld} {value!r}: 3-63 characters (up to 222 with dots) of lower-case "
                              "letters, digits, '-', '_' and '.', starting and ending with a letter or digit; "
                              "not an IP address, no 'goog' prefix and no 'google'.", field=fld)
    return value


def _object_name(value: object, fld: str = "name") -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"Invalid {fld}: an object name is required.", field=fld)
    if len(value.encode()) > 1024 or any(c in value for c in "\r\n\x00") or value in (".", "..") \
            or value.startswith(".well-known/acme-challenge/"):
        raise InvalidArgument(f"Invalid {fld} {value[:80]!r}: 1-1024 bytes of UTF-8 without carriage returns, "
                              "line feeds or NUL; not '.' or '..'.", field=fld)
    return value


# -------------------------------------------------------------------------------------- buckets

def _bucket_json(rec: Record) -> dict[str, Any]:
    out = {k: v for k, v in rec.data.items() if not k.startswith("keycard")}
    out["metageneration"] = str(rec.data.get("metageneration", "1"))
    out["etag"] = etag_for(rec.revision)
    return out


def _get_bucket(svc: Services, bucket: str) -> Record:
    rec = svc.runtime.store.get("resource", bucket_full(bucket))
    if rec is None or rec.deleted:
        raise NotFound("The specified bucket does not exist.", field="bucket", reason="BUCKET_NOT_FOUND")
    return rec


def _project_id_of(svc: Services, project_full: str) -> str:
    rec = svc.runtime.store.get("resource", project_full)
    return str(rec.data.get("projectId", "")) if rec is not None else ""


def default_policy(project_id: str) -> dict[str, Any]:
    owners = [f"projectEditor:{project_id}", f"projectOwner:{project_id}"]
    viewers = [f"projectViewer:{project_id}"]
    return {"version": 1, "bindings": [
        {"role": "roles/storage.legacyBucketOwner", "members": owners},
        {"role": "roles/storage.legacyBucketReader", "members": viewers},
        {"role": "roles/storage.legacyObjectOwner", "members": owners},
        {"role": "roles/storage.legacyObjectReader", "members": viewers}]}


def insert_bucket(svc: Services, caller: Caller, project: str, body: object) -> dict[str, Any]:
    from keycard.services.resourcemanager import resolve_project, shown_project
    if not project:
        raise InvalidArgument("Invalid project: the project query parameter is required.", field="project")
    fn = resolve_project(svc, project)
    svc.authorize(caller, "storage.buckets.create", fn, service=SERVICE, shown=shown_project(project))
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected a Bucket.", field="bucket")
    name = _bucket_name(body.get("name"), "name")
    prec = svc.runtime.store.get("resource", fn)
    if prec is None or prec.data.get("state") != "ACTIVE":
        raise NotFound(f"Project {project} not found.", field="project")
    full = bucket_full(name)
    if svc.runtime.store.get("resource", full) is not None:
        raise AlreadyExists("Your previous request to create the named bucket succeeded and you already own it."
                            if svc.allowed(caller, "storage.buckets.get", full) else
                            "The requested bucket name is not available. The bucket namespace is shared by all "
                            "users of the system. Please select a different name and try again.",
                            reason="BUCKET_NAME_TAKEN", field="name")
    now = rfc3339(svc.clock())
    location = body.get("location") or "US"
    storage_class = body.get("storageClass") or "STANDARD"
    if not isinstance(location, str) or not isinstance(storage_class, str):
        raise InvalidArgument("Invalid location or storageClass: expected strings.", field="location")
    number = fn.rsplit("/", 1)[1]
    data = {"kind": "storage#bucket", "id": name, "name": name, "projectNumber": number,
            "location": location.upper(), "locationType": "multi-region", "storageClass": storage_class,
            "timeCreated": now, "updated": now, "metageneration": "1",
            "selfLink": f"https://www.googleapis.com/storage/v1/b/{name}",
            "iamConfiguration": {"uniformBucketLevelAccess": {"enabled": True},
                                 "bucketPolicyOnly": {"enabled": True}, "publicAccessPrevention": "inherited"}}
    if isinstance(body.get("labels"), Mapping):
        data["labels"] = dict(body["labels"])
    svc.commit(caller, puts=[Put("resource", full, data, parent=fn),
                             Put("iam_policy", full, default_policy(_project_id_of(svc, fn)))],
               expect=[Expect("resource", full, None), Expect("resource", fn, prec.revision)],
               method="storage.buckets.create", service=SERVICE, resource_name=f"projects/_/buckets/{name}",
               request=dict(body))
    return _bucket_json(_get_bucket(svc, name))


def get_bucket(svc: Services, caller: Caller, bucket: str) -> dict[str, Any]:
    _authorize(svc, caller, "storage.buckets.get", bucket, bucket_full(bucket))
    return _bucket_json(_get_bucket(svc, bucket))


def list_buckets(svc: Services, caller: Caller, project: str, query: Mapping[str, str]) -> dict[str, Any]:
    from keycard.services.resourcemanager import resolve_project, shown_project
    if not project:
        raise InvalidArgument("Invalid project: the project query parameter is required.", field="project")
    fn = resolve_project(svc, project)
    svc.authorize(caller, "storage.buckets.list", fn, service=SERVICE, shown=shown_project(project))
    size = parse_page_size(query.get("maxResults"), 1000)
    prefix = f"//{SERVICE}/projects/_/buckets/{query.get('prefix', '')}"
    page = svc.runtime.store.list("resource", parent=fn, prefix=prefix, page_size=size,
                                  page_token=query.get("pageToken", ""))
    out: dict[str, Any] = {"kind": "storage#buckets",
                           "items": [_bucket_json(r) for r in page.records if not r.deleted]}
    if page.next_token:
        out["nextPageToken"] = page.next_token
    return out


def delete_bucket(svc: Services, caller: Caller, bucket: str) -> None:
    full = bucket_full(bucket)
    _authorize(svc, caller, "storage.buckets.delete", bucket, full)
    rec = _get_bucket(svc, bucket)
    store = svc.runtime.store
    if store.list("object", parent=bucket, page_size=1).records:
        raise AlreadyExists("The bucket you tried to delete is not empty.", reason="BUCKET_NOT_EMPTY",
                            field="bucket")
    policy = store.get("iam_policy", full)
    deletes = [Delete("resource", full)]
    expect = [Expect("resource", full, rec.revision)]
    if policy is not None:
        deletes.append(Delete("iam_policy", full))
        expect.append(Expect("iam_policy", full, policy.revision))
    svc.commit(caller, deletes=deletes, expect=expect, method="storage.buckets.delete", service=SERVICE,
               resource_name=f"projects/_/buckets/{bucket}")
    if svc.blobs is not None:
        svc.blobs.remove_bucket(bucket)


# ----------------------------------------------------------------------------------- bucket IAM

def get_bucket_iam_policy(svc: Services, caller: Caller, bucket: str, version: int) -> dict[str, Any]:
    full = bucket_full(bucket)
    _authorize(svc, caller, "storage.buckets.getIamPolicy", bucket, full)
    _get_bucket(svc, bucket)
    out = iam_policy.get_iam_policy(svc, caller, full, permission="storage.buckets.getIamPolicy", service=SERVICE,
                                    version=version)
    return {"kind": "storage#policy", "resourceId": f"projects/_/buckets/{bucket}", **out}


def set_bucket_iam_policy(svc: Services, caller: Caller, bucket: str, body: object, allow_lockout: bool
                          ) -> dict[str, Any]:
    full = bucket_full(bucket)
    _authorize(svc, caller, "storage.buckets.setIamPolicy", bucket, full)
    _get_bucket(svc, bucket)
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected a Policy.", field="policy")
    policy = {k: v for k, v in body.items() if k not in ("kind", "resourceId")}
    out = iam_policy.set_iam_policy(svc, caller, full, {"policy": policy}, permission="storage.buckets.setIamPolicy",
                                    service=SERVICE, method="storage.setIamPermissions",
                                    allow_lockout=allow_lockout)
    return {"kind": "storage#policy", "resourceId": f"projects/_/buckets/{bucket}", **out}


def test_bucket_iam_permissions(svc: Services, caller: Caller, bucket: str, permissions: list[str]
                                ) -> dict[str, Any]:
    out = iam_policy.test_iam_permissions(svc, caller, bucket_full(bucket), {"permissions": permissions})
    return {"kind": "storage#testIamPermissionsResponse", **out}


# -------------------------------------------------------------------------------------- objects

def _object_json(rec: Record, base_url: str) -> dict[str, Any]:
    out = {k: v for k, v in rec.data.items() if not k.startswith("keycard")}
    bucket, name = str(out["bucket"]), str(out["name"])
    enc = quote(name, safe="")
    out["id"] = f"{bucket}/{name}/{out['generation']}"
    out["selfLink"] = f"{base_url}/storage/v1/b/{bucket}/o/{enc}"
    out["mediaLink"] = f"{base_url}/download/storage/v1/b/{bucket}/o/{enc}?generation={out['generation']}&alt=media"
    out["etag"] = etag_for(rec.revision)
    return out


def _get_object(svc: Services, bucket: str, name: str, generation: str | None = None) -> Record:
    rec = svc.runtime.store.get("object", f"{bucket}/{name}")
    if rec is None or rec.deleted or (generation and str(rec.data.get("generation")) != generation):
        raise NotFound(f"No such object: {bucket}/{name}", field="object", reason="OBJECT_NOT_FOUND")
    return rec


def authorize_insert(svc: Services, caller: Caller, bucket: str, name: str) -> tuple[Record | None, Record]:
    """objects.insert's checks: storage.objects.create, and storage.objects.delete when the name is taken (as
    in Google); then the bucket must exist. (The object as it is now, the bucket.)"""
    full = object_full(bucket, name)
    _authorize(svc, caller, "storage.objects.create", bucket, full)
    existing = svc.runtime.store.get("object", f"{bucket}/{name}")
    if existing is not None:       # overwriting needs delete too, as in Google
        _authorize(svc, caller, "storage.objects.delete", bucket, full)
    return existing, _get_bucket(svc, bucket)


def object_fields(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """The caller-settable fields of an object's metadata (``metadata``, cacheControl, …), validated."""
    out: dict[str, Any] = {}
    if not metadata:
        return out
    extra = metadata.get("metadata")
    if extra is not None:
        if not isinstance(extra, Mapping) or not all(isinstance(v, str) for v in extra.values()):
            raise InvalidArgument("Invalid metadata: expected an object of string values.", field="metadata")
        out["metadata"] = dict(extra)
    for k in ("cacheControl", "contentDisposition", "contentEncoding", "contentLanguage"):
        if isinstance(metadata.get(k), str):
            out[k] = metadata[k]
    return out


def _precondition(existing: Record | None, if_generation_match: str | None) -> None:
    if if_generation_match is None:
        return
    current = str(existing.data.get("generation")) if existing is not None else "0"
    if if_generation_match != current:
        raise FailedPrecondition("At least one of the pre-conditions you specified did not hold.",
                                 reason="conditionNotMet", field="ifGenerationMatch")


def insert_object(svc: Services, caller: Caller, bucket: str, name: str, data: bytes, *, content_type: str,
                  metadata: Mapping[str, Any] | None, base_url: str,
                  if_generation_match: str | None = None) -> dict[str, Any]:
    name = _object_name(name)
    existing, brec = authorize_insert(svc, caller, bucket, name)
    _precondition(existing, if_generation_match)
    if len(data) > MAX_OBJECT_BYTES:
        raise InvalidArgument(f"Object of {len(data)} bytes is over keycard's {MAX_OBJECT_BYTES} byte limit.",
                              field="media")
    fields = object_fields(metadata)
    written = _blobs(svc).write(bucket, data)
    return commit_object(svc, caller, brec, name, written, content_type=content_type, fields=fields,
                         existing=existing, base_url=base_url)


def commit_object(svc: Services, caller: Caller, brec: Record, name: str, written: Written, *, content_type: str,
                  fields: Mapping[str, Any], existing: Record | None, base_url: str) -> dict[str, Any]:
    """Commit the metadata of an object whose bytes are already in place (``written``); the object appears
    now, atomically. A failed commit removes the new file; a successful overwrite the old one."""
    blobs = _blobs(svc)
    bucket = str(brec.data["name"])
    now = rfc3339(svc.clock())
    meta: dict[str, Any] = {"kind": "storage#object", "name": name, "bucket": bucket,
                            "generation": written.blob, "metageneration": "1",
                            "contentType": content_type or "application/octet-stream",
                            "storageClass": brec.data.get("storageClass", "STANDARD"), "size": str(written.size),
                            "md5Hash": written.md5, "timeCreated": now, "updated": now,
                            "timeStorageClassUpdated": now, "keycardBlob": written.blob, **fields}
    if written.crc32c:
        meta["crc32c"] = written.crc32c
    try:
        svc.commit(caller, puts=[Put("object", f"{bucket}/{name}", meta, parent=bucket)],
                   expect=[Expect("object", f"{bucket}/{name}", existing.revision if existing else None)],
                   method="storage.objects.create", service=SERVICE,
                   resource_name=f"projects/_/buckets/{bucket}/objects/{name}")
    except BaseException:
        blobs.delete(bucket, written.blob)
        raise
    if existing is not None:
        blobs.delete(bucket, str(existing.data.get("keycardBlob")))
    return _object_json(_get_object(svc, bucket, name), base_url)


def get_object(svc: Services, caller: Caller, bucket: str, name: str, base_url: str,
               generation: str | None = None) -> dict[str, Any]:
    _authorize(svc, caller, "storage.objects.get", bucket, object_full(bucket, name))
    _get_bucket(svc, bucket)
    return _object_json(_get_object(svc, bucket, name, generation), base_url)


def object_media(svc: Services, caller: Caller, bucket: str, name: str, generation: str | None = None
                 ) -> tuple[Record, BlobStore]:
    """The object's record and the store holding its bytes, after storage.objects.get."""
    _authorize(svc, caller, "storage.objects.get", bucket, object_full(bucket, name))
    _get_bucket(svc, bucket)
    return _get_object(svc, bucket, name, generation), _blobs(svc)


def list_objects(svc: Services, caller: Caller, bucket: str, query: Mapping[str, str], base_url: str
                 ) -> dict[str, Any]:
    _authorize(svc, caller, "storage.objects.list", bucket, bucket_full(bucket))
    _get_bucket(svc, bucket)
    size = parse_page_size(query.get("maxResults"), 1000)
    prefix = query.get("prefix", "")
    delimiter = query.get("delimiter", "")
    token = query.get("pageToken", "")
    items: list[dict[str, Any]] = []
    prefixes: list[str] = []
    seen: set[str] = set()
    store = svc.runtime.store
    while True:
        page = store.list("object", parent=bucket, prefix=f"{bucket}/{prefix}", page_size=size, page_token=token)
        for rec in page.records:
            rest = rec.name[len(bucket) + 1 + len(prefix):]
            if delimiter and delimiter in rest:
                p = prefix + rest[:rest.index(delimiter) + len(delimiter)]
                if p not in seen:
                    seen.add(p)
                    prefixes.append(p)
                continue
            items.append(_object_json(rec, base_url))
        token = page.next_token
        if not token or len(items) + len(prefixes) >= size:
            break
    out: dict[str, Any] = {"kind": "storage#objects"}
    if items:
        out["items"] = items
    if prefixes:
        out["prefixes"] = prefixes
    if token:
        out["nextPageToken"] = token
    return out


def delete_object(svc: Services, caller: Caller, bucket: str, name: str, generation: str | None = None) -> None:
    _authorize(svc, caller, "storage.objects.delete", bucket, object_full(bucket, name))
    _get_bucket(svc, bucket)
    rec = _get_object(svc, bucket, name, generation)
    svc.commit(caller, deletes=[Delete("object", rec.name)], expect=[Expect("object", rec.name, rec.revision)],
               method="storage.objects.delete", service=SERVICE,
               resource_name=f"projects/_/buckets/{bucket}/objects/{name}")
    _blobs(svc).delete(bucket, str(rec.data.get("keycardBlob")))


