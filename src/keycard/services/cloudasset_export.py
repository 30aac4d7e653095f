"""Cloud Asset API v1 ``exportAssets`` to a ``gs://`` object of keycard's object store, and its operations.

The export writes newline-delimited JSON in Cloud Asset Inventory's export format (the format
``Engine.load`` and ``keycard import --cai`` read): one record per asset with ``name``, ``asset_type``,
``ancestors`` (``projects/N``, ``folders/F``, ``organizations/O``, nearest first) and ``resource``
(``contentType`` ``RESOURCE``) or ``iam_policy`` (``IAM_POLICY``), plus ``update_time``.

Permissions, as Google's: ``cloudasset.assets.exportResource`` (RESOURCE) or
``cloudasset.assets.exportIamPolicy`` (IAM_POLICY) on the parent, and — keycard writes as the caller —
``storage.objects.create`` on the destination object. The work runs within the request and the returned
long-running Operation is already ``done``; ``operations.get`` reads it back (the export permission of
its content type on its parent).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator, Mapping
from typing import Any

from keycard import names
from keycard.engine.engine import Engine
from keycard.errors import InvalidArgument, NotFound
from keycard.services import storage
from keycard.services.cloudasset import SERVICE, scope_full
from keycard.services.common import Caller, Services, rfc3339
from keycard.store.base import Put

__all__ = ["cai_records", "export_assets", "get_operation"]

_PERMISSION = {"RESOURCE": "cloudasset.assets.exportResource", "IAM_POLICY": "cloudasset.assets.exportIamPolicy"}
_GCS = re.compile(r"^gs://([^/]+)/(.+)$")
_TYPE = "type.googleapis.com/google.cloud.asset.v1."


def _ancestors(engine: Engine, name: str) -> list[str]:
    return [a.split("/", 3)[3] for a in engine.ancestry(name) if a.startswith(f"//{names.CRM}/")]


def cai_records(engine: Engine, store: Any, scope: str, content_type: str, when: str,
                asset_types: list[re.Pattern[str]] | None = None) -> Iterator[dict[str, Any]]:
    """The scope's assets as Cloud Asset Inventory export records (RESOURCE or IAM_POLICY)."""
    records = {r.name: r for r in store.scan(["resource"]) if r.name.startswith(f"//{names.CRM}/")} \
        if content_type == "RESOURCE" else {}
    for name in engine.resources():
        chain = engine.ancestry(name)
        if scope not in chain:
            continue
        node = engine._h.nodes.get(name)
        atype = node.type if node is not None else names.parse_resource(name).type
        if asset_types and not any(t.match(atype) for t in asset_types):
            continue
        rec: dict[str, Any] = {"name": name, "asset_type": atype, "ancestors": _ancestors(engine, name),
                               "update_time": when}
        if content_type == "IAM_POLICY":
            pol = engine.get_iam_policy(name)
            if pol is None or not pol.bindings:
                continue
            rec["iam_policy"] = pol.to_json()
        else:
            data: dict[str, Any] = {"name": name.split("/", 3)[3]}
            stored = records.get(name)
            if stored is not None:
                d = stored.data
                for k in ("displayName", "state", "labels", "createTime", "projectId"):
                    if d.get(k):
                        data[k] = d[k]
                if atype == f"{names.CRM}/Project":
                    data["projectNumber"] = name.rsplit("/", 1)[1]
            res: dict[str, Any] = {"version": "v1", "discovery_name": atype.split("/", 1)[1], "data": data}
            if len(chain) > 1:
                res["parent"] = chain[1]
            rec["resource"] = res
        yield rec


def export_assets(svc: Services, caller: Caller, parent: str, body: object) -> dict[str, Any]:
    full = scope_full(parent, "parent")
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected {\"outputConfig\": {\"gcsDestination\": {\"uri\": "
                              "\"gs://BUCKET/OBJECT\"}}, \"contentType\": \"RESOURCE\"}.", field="body")
    content_type = str(body.get("contentType") or "RESOURCE")
    if content_type == "CONTENT_TYPE_UNSPECIFIED":
        content_type = "RESOURCE"
    if content_type not in _PERMISSION:
        raise InvalidArgument(f"Invalid contentType {content_type!r}: keycard exports RESOURCE or IAM_POLICY.",
                              field="contentType")
    svc.authorize(caller, _PERMISSION[content_type], full, service=SERVICE)
    out_cfg = body.get("outputConfig")
    gcs = out_cfg.get("gcsDestination") if isinstance(out_cfg, Mapping) else None
    uri = gcs.get("uri") if isinstance(gcs, Mapping) else None
    m = _GCS.match(uri) if isinstance(uri, str) else None
    if m is None:
        raise InvalidArgument("Invalid outputConfig.gcsDestination.uri: expected gs://BUCKET/OBJECT in keycard's "
                              "object store.", field="outputConfig.gcsDestination.uri")
    types = body.get("assetTypes") or []
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise InvalidArgument("Invalid assetTypes: a list such as [\"storage.googleapis.com/Bucket\"].",
                              field="assetTypes")
    patterns = [re.compile("^" + ".*".join(re.escape(x) for x in t.split(".*")) + "$") for t in types]
    engine = svc.runtime.engine
    when = rfc3339(svc.clock())
    lines = [json.dumps(r, separators=(",", ":"), sort_keys=True)
             for r in cai_records(engine, svc.runtime.store, engine.canonical_name(full), content_type, when,
                                  patterns)]
    data = ("\n".join(lines) + "\n").encode() if lines else b""
    storage.insert_object(svc, caller, m.group(1), m.group(2), data, content_type="application/x-ndjson",
                          metadata=None, base_url="")
    name = f"{parent}/operations/ExportAssets/{content_type}-{secrets.token_hex(8)}"
    request = {"parent": parent, "contentType": content_type, "outputConfig": dict(out_cfg)}  # type: ignore[arg-type]
    if types:
        request["assetTypes"] = list(types)
    op = {"name": name, "metadata": {"@type": _TYPE + "ExportAssetsRequest", **request}, "done": True,
          "response": {"@type": _TYPE + "ExportAssetsResponse", "readTime": when,
                       "outputConfig": dict(out_cfg),  # type: ignore[arg-type]
                       "outputResult": {"gcsResult": {"uris": [uri]}}, "keycardAssetCount": len(lines)}}
    svc.commit(caller, puts=[Put("operation", name, {**op, "keycardCaller": caller.principal or ""})],
               method="google.cloud.asset.v1.AssetService.ExportAssets", service=SERVICE,
               resource_name=parent, request=request)
    return op


def get_operation(svc: Services, caller: Caller, parent: str, kind: str, op_id: str) -> dict[str, Any]:
    full = scope_full(parent, "name")
    content_type = op_id.split("-", 1)[0] if op_id.split("-", 1)[0] in _PERMISSION else "RESOURCE"
    held = [p for p in _PERMISSION.values() if svc.allowed(caller, p, full)]     # with the caller's sets
    if _PERMISSION[content_type] not in held:
        if held:
            svc.authorize(caller, _PERMISSION[content_type], full, service=SERVICE)
        else:
            svc.authorize(caller, _PERMISSION["RESOURCE"], full, service=SERVICE)
    name = f"{parent}/operations/{kind}/{op_id}"
    rec = svc.runtime.store.get("operation", name)
    if rec is None or rec.data.get("keycardCaller") not in (caller.principal or "", None):
        raise NotFound(f"Operation {name} not found.", field="name")
    return {k: v for k, v in rec.data.items() if k != "keycardCaller"}


