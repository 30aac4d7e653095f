"""An organization's OpenID Connect identity providers for its human users (keycard-specific REST).

``/v1/organizations/{org}/keycardIdentityProviders[/{id}]``: create (``?identityProviderId=``),
get, list, patch (``updateMask``), delete. A provider is a record of kind ``oidc_provider`` named
``organizations/N/identityProviders/ID`` (parent: the organization's full name); the runtime
mirrors it into ``Registry.oidc`` and :mod:`keycard.identity.oidc` verifies the users' ID tokens
against it. Shape (modelled on Google's WorkforcePoolProvider)::

    {"displayName": "Corp SSO", "description": "", "disabled": false,
     "oidc": {"issuerUri": "https://login.corp.example", "clientIds": ["keycard"],
              "jwksJson": "{\\"keys\\": [...]}"            # or "jwksUri": "https://.../jwks"
     },
     "attributeMapping": {"google.subject": "assertion.email", "google.groups": "assertion.groups"},
     "attributeCondition": "'engineering' in assertion.roles",     # optional CEL, must be true
     "allowedDomains": ["corp.example"],            # default: the organization's domain
     "requireEmailVerified": true}

Permissions: Google's workforce identity federation permissions on the organization,
``iam.googleapis.com/workforcePools.{create,get,list,update,delete}`` (in ``roles/owner`` and
``roles/iam.workforcePoolAdmin`` as Google has them; read ones also in the viewer roles). Only
the local admin path (``keycard idp`` on the server's host, ``local=True``) skips the check.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from keycard.errors import Aborted, AlreadyExists, InvalidArgument, NotFound
from keycard.identity.oidc import DEFAULT_MAPPING, compile_provider
from keycard.runtime import etag_for, revision_from_etag
from keycard.services.common import Caller, Services, parse_page_size, rfc3339
from keycard.store.base import Delete, Expect, Put
from keycard.store.base import Record as StoreRecord

__all__ = ["KIND", "PERMISSIONS", "create_provider", "delete_provider", "get_provider", "list_providers",
           "patch_provider"]

SERVICE = "iam.googleapis.com"
KIND = "oidc_provider"
PERMISSIONS = {verb: f"iam.googleapis.com/workforcePools.{verb}" for verb in ("create", "get", "list", "update",
                                                                               "delete")}
_ID = re.compile(r"^[a-z][a-z0-9-]{2,30}[a-z0-9]$")
_ORG = re.compile(r"^[0-9]{1,20}$")
_TOP = ("displayName", "description", "disabled", "oidc", "attributeMapping", "attributeCondition",
        "allowedDomains", "requireEmailVerified")
_OUTPUT_ONLY = ("name", "state", "createTime", "updateTime", "etag")
_OIDC = ("issuerUri", "clientIds", "jwksJson", "jwksUri")
_MASKS = frozenset(_TOP) | {f"oidc.{k}" for k in _OIDC}
_CRM = "//cloudresourcemanager.googleapis.com/"


def _org(svc: Services, caller: Caller, org: str, verb: str, *, local: bool) -> tuple[str, StoreRecord]:
    """The organization's full name and record; the permission is checked before existence."""
    if not _ORG.match(org):
        raise InvalidArgument(f"Invalid organization {org!r}: expected the organization's number.", field="parent")
    fn = f"{_CRM}organizations/{org}"
    if not local:
        svc.authorize(caller, PERMISSIONS[verb], fn, service=SERVICE)
    rec = svc.runtime.store.get("resource", fn)
    if rec is None or rec.deleted:
        raise NotFound(f"Organization organizations/{org} not found.", field="parent")
    return fn, rec


def _name(org: str, provider: str) -> str:
    return f"organizations/{org}/identityProviders/{provider}"


def _present(rec: StoreRecord) -> dict[str, Any]:
    out = dict(rec.data)
    out["etag"] = etag_for(rec.revision)
    return out


def _get(svc: Services, org: str, provider: str) -> StoreRecord:
    rec = svc.runtime.store.get(KIND, _name(org, provider)) if _ID.match(provider) else None
    if rec is None or rec.deleted:
        raise NotFound(f"Identity provider {_name(org, provider)} not found.", field="name",
                       reason="IDENTITY_PROVIDER_NOT_FOUND")
    return rec


def _text(body: Mapping[str, Any], key: str, limit: int) -> str:
    v = body.get(key, "")
    if not isinstance(v, str) or len(v) > limit:
        raise InvalidArgument(f"Invalid {key}: a string of at most {limit} characters.", field=key)
    return v


def _fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """The request's provider fields, normalised (not yet validated as a whole)."""
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError):
        raise InvalidArgument("Invalid request body: strings must be valid Unicode text.", field="body") from None
    for k in body:
        if k not in _TOP and k not in _OUTPUT_ONLY:
            raise InvalidArgument(f"Invalid JSON payload received. Unknown name {k!r}: an identity provider has "
                                  f"{', '.join(_TOP)}.", field=k)
    out: dict[str, Any] = {}
    for k in ("displayName", "description"):
        if k in body:
            out[k] = _text(body, k, 32 if k == "displayName" else 256)
    for k in ("disabled", "requireEmailVerified"):
        if k in body:
            out[k] = body[k]
    if "oidc" in body:
        oidc = body["oidc"]
        if not isinstance(oidc, Mapping):
            raise InvalidArgument("Invalid oidc: expected {issuerUri, clientIds, jwksJson or jwksUri}.", field="oidc")
        for k in oidc:
            if k not in (*_OIDC, "clientId"):
                raise InvalidArgument(f"Invalid JSON payload received. Unknown name 'oidc.{k}': oidc has issuerUri, "
                                      "clientIds (or clientId), jwksJson and jwksUri.", field=f"oidc.{k}")
        o = {k: oidc[k] for k in _OIDC if k in oidc}
        if "clientId" in oidc:
            if "clientIds" in oidc:
                raise InvalidArgument("Invalid oidc: give clientIds or clientId, not both.", field="oidc.clientId")
            o["clientIds"] = [oidc["clientId"]] if isinstance(oidc["clientId"], str) else oidc["clientId"]
        if isinstance(o.get("jwksJson"), Mapping):
            o["jwksJson"] = json.dumps(o["jwksJson"], separators=(",", ":"))
        out["oidc"] = o
    if "attributeMapping" in body:
        out["attributeMapping"] = body["attributeMapping"]
    if "attributeCondition" in body:
        out["attributeCondition"] = body["attributeCondition"]
    if "allowedDomains" in body:
        d = body["allowedDomains"]
        out["allowedDomains"] = [x.lower() if isinstance(x, str) else x for x in d] if isinstance(d, list) else d
    return out


def _validated(name: str, data: dict[str, Any]) -> dict[str, Any]:
    data = {k: v for k, v in data.items() if v is not None}
    if data.get("attributeCondition") == "":
        del data["attributeCondition"]
    compile_provider(name, data)                 # 400 naming the field, or a usable provider
    data["state"] = "ACTIVE"
    return data


# ----------------------------------------------------------------------------------- methods

def create_provider(svc: Services, caller: Caller, org: str, provider_id: str | None, body: object, *,
                    local: bool = False) -> dict[str, Any]:
    fn, org_rec = _org(svc, caller, org, "create", local=local)
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected an identity provider object.", field="body")
    if not isinstance(provider_id, str) or not _ID.match(provider_id):
        raise InvalidArgument(f"Invalid identityProviderId {provider_id!r}: 4-32 lower-case letters, digits and "
                              "hyphens, starting with a letter and not ending with a hyphen.",
                              field="identityProviderId")
    name = _name(org, provider_id)
    data = _fields(body)
    data.setdefault("attributeMapping", dict(DEFAULT_MAPPING))
    data.setdefault("allowedDomains", [str(org_rec.data.get("displayName", "")).lower()])
    data.setdefault("requireEmailVerified", True)
    data.setdefault("disabled", False)
    now = rfc3339(svc.clock())
    data = {"name": name, **_validated(name, data), "createTime": now, "updateTime": now}
    if svc.runtime.store.get(KIND, name) is not None:
        raise AlreadyExists(f"Identity provider {name} already exists.", field="identityProviderId",
                            reason="IDENTITY_PROVIDER_EXISTS")
    svc.commit(caller, puts=[Put(KIND, name, data, parent=fn)], expect=[Expect(KIND, name, None)],
               method="keycard.iam.v1.CreateIdentityProvider", service=SERVICE, resource_name=name,
               request=dict(body), service_data={"keycardLocalAdmin": True} if local else None)
    return _present(_get(svc, org, provider_id))


def get_provider(svc: Services, caller: Caller, org: str, provider: str, *, local: bool = False) -> dict[str, Any]:
    _org(svc, caller, org, "get", local=local)
    return _present(_get(svc, org, provider))


def list_providers(svc: Services, caller: Caller, org: str, query: Mapping[str, str], *,
                   local: bool = False) -> dict[str, Any]:
    fn, _rec = _org(svc, caller, org, "list", local=local)
    size = parse_page_size(query.get("pageSize"), 50)
    page = svc.runtime.store.list(KIND, parent=fn, page_size=size, page_token=query.get("pageToken", ""))
    out = [_present(r) for r in page.records if not r.deleted]
    result: dict[str, Any] = {"identityProviders": out} if out else {}
    if page.next_token:
        result["nextPageToken"] = page.next_token
    return result


def patch_provider(svc: Services, caller: Caller, org: str, provider: str, body: object,
                   update_mask: str | None, *, local: bool = False) -> dict[str, Any]:
    fn, org_rec = _org(svc, caller, org, "update", local=local)
    rec = _get(svc, org, provider)
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected an identity provider object.", field="body")
    etag = body.get("etag")
    if etag and revision_from_etag(str(etag)) != rec.revision:
        raise Aborted("The identity provider changed since it was read; read it again and retry.",
                      reason="ETAG_MISMATCH")
    given = _fields(body)
    if update_mask is None:
        mask = [k for k in _TOP if k in given]
    elif isinstance(update_mask, str):
        mask = [m.strip() for m in update_mask.split(",") if m.strip()]
    else:
        raise InvalidArgument("Invalid updateMask: a comma-separated list of field names.", field="updateMask")
    if not mask or any(m not in _MASKS for m in mask):
        raise InvalidArgument(f"Invalid updateMask {update_mask!r}: fields that can be updated are "
                              f"{', '.join(sorted(_MASKS))}.", field="updateMask")
    data = {k: v for k, v in rec.data.items() if k not in _OUTPUT_ONLY}
    oidc = dict(data.get("oidc") or {})
    for m in mask:
        if m.startswith("oidc."):
            sub = m[5:]
            value = (given.get("oidc") or {}).get(sub)
            if value is None:
                oidc.pop(sub, None)
            else:
                oidc[sub] = value
                other = {"jwksJson": "jwksUri", "jwksUri": "jwksJson"}.get(sub)
                if other is not None and f"oidc.{other}" not in mask:
                    oidc.pop(other, None)          # switching key source replaces the other one
        elif m == "oidc":
            oidc = dict(given.get("oidc") or {})
        elif m in given:
            data[m] = given[m]
        else:
            data.pop(m, None)                      # in the mask, not in the body: back to the default
    data["oidc"] = oidc
    data.setdefault("attributeMapping", dict(DEFAULT_MAPPING))
    data.setdefault("allowedDomains", [str(org_rec.data.get("displayName", "")).lower()])
    data.setdefault("requireEmailVerified", True)
    data.setdefault("disabled", False)
    data = {"name": rec.name, **_validated(rec.name, data), "createTime": rec.data.get("createTime"),
            "updateTime": rfc3339(svc.clock())}
    svc.commit(caller, puts=[Put(KIND, rec.name, data, parent=fn)], expect=[Expect(KIND, rec.name, rec.revision)],
               method="keycard.iam.v1.UpdateIdentityProvider", service=SERVICE, resource_name=rec.name,
               request={"updateMask": ",".join(mask), **dict(body)},
               service_data={"keycardLocalAdmin": True} if local else None)
    return _present(_get(svc, org, provider))


def delete_provider(svc: Services, caller: Caller, org: str, provider: str, *, local: bool = False
                    ) -> dict[str, Any]:
    _org(svc, caller, org, "delete", local=local)
    rec = _get(svc, org, provider)
    svc.commit(caller, deletes=[Delete(KIND, rec.name)], expect=[Expect(KIND, rec.name, rec.revision)],
               method="keycard.iam.v1.DeleteIdentityProvider", service=SERVICE, resource_name=rec.name,
               service_data={"keycardLocalAdmin": True} if local else None)
    return {}
