"""IAM v2 deny policies (google.iam.v2.Policies).

A deny policy is one record of kind ``deny_policy`` named
``policies/{urlencoded attachment}/denypolicies/{id}`` whose data is the v2 Policy JSON plus
``attachmentPoint`` (the decoded attachment, projects by number); the runtime hands it to the
engine, so a deny rule bites as soon as the write returns. Mutations answer with an Operation
that is already done, kept for ``operations.get``.

Attachment points arrive encoded once (discovery: ``%2F``, decoded by the router) or twice
(GAPIC: ``%252F``); they are unquoted until stable and canonicalised (project id → number).
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote

from keycard import names
from keycard.engine.model import parse_deny_policy
from keycard.errors import Aborted, AlreadyExists, InvalidArgument, NotFound
from keycard.runtime import etag_for, revision_from_etag
from keycard.services.common import Caller, Services, parse_page_size, rfc3339
from keycard.store.base import Delete, Expect, Put, Record

__all__ = ["Attachment", "create_policy", "delete_policy", "get_operation", "get_policy", "list_policies",
           "parse_attachment", "update_policy"]

SERVICE = "iam.googleapis.com"
KIND = "deny_policy"
MAX_POLICIES = 500          # per attachment point
MAX_RULES = 500             # per policy
_POLICY_ID_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_V2 = "type.googleapis.com/google.iam.v2."
_METHOD = "google.iam.v2.Policies."
_RULE_FIELDS = ("deniedPrincipals", "exceptionPrincipals", "deniedPermissions", "exceptionPermissions")


class Attachment:
    """A deny-policy attachment point: the canonical full name and the names shown to the caller."""

    __slots__ = ("full", "shown")

    def __init__(self, full: str, shown: str) -> None:
        self.full = full          # //cloudresourcemanager.googleapis.com/projects/NUMBER
        self.shown = shown        # as the caller wrote it (a project id stays an id)

    @property
    def decoded(self) -> str:     # cloudresourcemanager.googleapis.com/projects/NUMBER
        return self.full[2:]

    @property
    def prefix(self) -> str:      # policies/cloudresourcemanager.googleapis.com%2Fprojects%2FNUMBER/denypolicies/
        return f"policies/{quote(self.decoded, safe='')}/denypolicies/"


def parse_attachment(svc: Services, raw: str, field: str = "parent") -> Attachment:
    text = raw
    for _ in range(4):                       # %252F → %2F → /
        nxt = unquote(text)
        if nxt == text:
            break
        text = nxt
    bad = InvalidArgument(f"Invalid {field} {raw!r}: deny policies attach to "
                          "'cloudresourcemanager.googleapis.com/projects/PROJECT', '…/folders/NUMBER' or "
                          "'…/organizations/NUMBER', URL-encoded: "
                          "policies/cloudresourcemanager.googleapis.com%2Fprojects%2FPROJECT/denypolicies.",
                          field=field)
    if not text.startswith(names.CRM + "/"):
        raise bad
    try:
        rn = names.parse_resource("//" + text, field)
    except InvalidArgument:
        raise bad from None
    if not rn.is_container:
        raise bad
    full = svc.runtime.engine.canonical_name(rn.full) if rn.relative.startswith("projects/") else rn.full
    return Attachment(full, rn.full)


def _policy_id(value: object) -> str:
    if not isinstance(value, str) or not _POLICY_ID_RE.match(value):
        raise InvalidArgument(f"Invalid policyId {value!r}: 1-63 lower-case letters, digits and hyphens, starting "
                              "with a letter.", field="policyId")
    return value


def _str_list(value: object, fld: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"Invalid {fld}: expected an array of strings.", field=fld)
    return list(value)


def _get(obj: Mapping[str, Any], camel: str) -> Any:
    if camel in obj:
        return obj[camel]
    return obj.get("".join("_" + c.lower() if c.isupper() else c for c in camel))


def _normalise(body: object, *, field: str = "policy") -> dict[str, Any]:
    """Validate a v2 Policy body (through the engine's parser) and return its stored, camelCase form."""
    if not isinstance(body, Mapping):
        raise InvalidArgument(f"Invalid {field}: expected a google.iam.v2.Policy object.", field=field)
    kind = body.get("kind")
    if kind not in (None, "", "DenyPolicy"):
        raise InvalidArgument(f"Invalid {field}.kind {kind!r}: only DenyPolicy is supported.", field=f"{field}.kind")
    rules = body.get("rules")
    if isinstance(rules, list) and len(rules) > MAX_RULES:
        raise InvalidArgument(f"Invalid {field}.rules: {len(rules)} rules is over the limit of {MAX_RULES} rules "
                              "per deny policy; split them over several policies.", field=f"{field}.rules")
    parse_deny_policy({k: v for k, v in body.items() if k != "name"}, field, name="-")
    out_rules: list[dict[str, Any]] = []
    for i, r in enumerate(rules or []):
        dr = _get(r, "denyRule")
        df = f"{field}.rules[{i}].denyRule"
        rule: dict[str, Any] = {f: _str_list(_get(dr, f), f"{df}.{f}") for f in _RULE_FIELDS}
        cond = _get(dr, "denialCondition")
        if cond is not None:
            rule["denialCondition"] = {k: cond[k] for k in ("expression", "title", "description", "location")
                                       if isinstance(cond.get(k), str) and cond[k]}
        out: dict[str, Any] = {"denyRule": rule}
        if r.get("description"):
            out["description"] = r["description"]
        out_rules.append(out)
    data: dict[str, Any] = {"kind": "DenyPolicy", "rules": out_rules}
    display = _get(body, "displayName")
    if display not in (None, ""):
        if not isinstance(display, str) or len(display) > 63:
            raise InvalidArgument(f"Invalid {field}.displayName: at most 63 characters.", field=f"{field}.displayName")
        data["displayName"] = display
    annotations = body.get("annotations")
    if annotations not in (None, {}):
        if not isinstance(annotations, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                           for k, v in annotations.items()):
            raise InvalidArgument(f"Invalid {field}.annotations: expected an object of strings.",
                                  field=f"{field}.annotations")
        data["annotations"] = dict(annotations)
    return data


def _present(data: Mapping[str, Any], revision: int) -> dict[str, Any]:
    out = {k: v for k, v in data.items() if k != "attachmentPoint"}
    out["etag"] = etag_for(revision)
    return out


def _operation(name: str, policy: Mapping[str, Any], now: str, caller: Caller) -> tuple[dict[str, Any], Put]:
    """A done Operation; the stored copy (for operations.get) carries no etag: it is the commit's revision."""
    op_name = f"{name}/operations/{secrets.token_hex(8)}"
    response: dict[str, Any] = {"@type": _V2 + "Policy", **policy}
    op: dict[str, Any] = {"name": op_name, "done": True, "response": response,
                          "metadata": {"@type": _V2 + "PolicyOperationMetadata", "createTime": now}}
    stored = {**op, "response": {k: v for k, v in response.items() if k != "etag"}}
    return op, Put("operation", op_name, {**stored, "keycardCaller": caller.principal or ""})


def _check_etag(etag: object, rec: Record, field: str) -> None:
    if etag in (None, ""):
        return
    if not isinstance(etag, str):
        raise InvalidArgument(f"Invalid {field}: expected the etag string from the policy.", field=field)
    if revision_from_etag(etag, field) != rec.revision:
        raise Aborted("The deny policy was changed since it was read (etag mismatch). Get it again, re-apply "
                      "your change and retry.", reason="ETAG_MISMATCH", field=field)


def _resource_exists(svc: Services, att: Attachment) -> None:
    rec = svc.runtime.store.get("resource", att.full)
    if rec is None or rec.data.get("state") not in (None, "ACTIVE"):
        raise NotFound(f"Attachment point {att.shown[2:]} not found.", field="parent")


# ------------------------------------------------------------------------------------------ methods

def create_policy(svc: Services, caller: Caller, attachment: str, policy_id: object, body: object
                  ) -> dict[str, Any]:
    att = parse_attachment(svc, attachment)
    svc.authorize(caller, "iam.denypolicies.create", att.full, service=SERVICE, shown=att.shown)
    pid = _policy_id(policy_id)
    data = _normalise(body)
    _resource_exists(svc, att)
    name = att.prefix + pid
    if svc.runtime.store.get(KIND, name) is not None:
        raise AlreadyExists(f"Deny policy {name} already exists; update it or choose another policyId.",
                            field="policyId")
    count = len(svc.runtime.store.list(KIND, prefix=att.prefix, page_size=MAX_POLICIES + 1).records)
    if count >= MAX_POLICIES:
        raise InvalidArgument(f"Invalid parent: {att.decoded} already holds {count} deny policies, the limit of "
                              f"{MAX_POLICIES} per attachment point; add rules to an existing policy instead.",
                              field="parent", reason="DENY_POLICY_LIMIT")
    now = rfc3339(svc.clock())
    stored = {"name": name, "uid": str(uuid.uuid4()), **data, "createTime": now, "updateTime": now,
              "attachmentPoint": att.decoded}
    shown = {k: v for k, v in stored.items() if k != "attachmentPoint"}
    op, op_put = _operation(name, shown, now, caller)
    rev = svc.commit(caller, puts=[Put(KIND, name, stored, parent=att.full), op_put],
                     expect=[Expect(KIND, name, None)], method=_METHOD + "CreatePolicy", service=SERVICE,
                     resource_name=name, request={"parent": att.prefix[:-1], "policyId": pid, "policy": body})
    op["response"]["etag"] = etag_for(rev)
    return op


def _existing(svc: Services, caller: Caller, attachment: str, policy_id: str, permission: str
              ) -> tuple[Attachment, str, Record]:
    att = parse_attachment(svc, attachment, "name")
    svc.authorize(caller, permission, att.full, service=SERVICE, shown=att.shown)
    name = att.prefix + policy_id
    rec = svc.runtime.store.get(KIND, name)
    if rec is None or rec.deleted:
        raise NotFound(f"Deny policy {name} not found.", field="name")
    return att, name, rec


def get_policy(svc: Services, caller: Caller, attachment: str, policy_id: str) -> dict[str, Any]:
    _, _, rec = _existing(svc, caller, attachment, policy_id, "iam.denypolicies.get")
    return _present(rec.data, rec.revision)


def list_policies(svc: Services, caller: Caller, attachment: str, page_size: object, page_token: str
                  ) -> dict[str, Any]:
    att = parse_attachment(svc, attachment)
    svc.authorize(caller, "iam.denypolicies.list", att.full, service=SERVICE, shown=att.shown)
    size = parse_page_size(page_size, 1000)
    try:
        page = svc.runtime.store.list(KIND, prefix=att.prefix, page_size=size, page_token=page_token or "")
    except (ValueError, InvalidArgument):
        raise InvalidArgument(f"Invalid pageToken {page_token!r}: pass the nextPageToken of the previous page.",
                              field="pageToken") from None
    out: dict[str, Any] = {}
    policies = [_present(r.data, r.revision) for r in page.records]
    if policies:
        out["policies"] = policies
    if page.next_token:
        out["nextPageToken"] = page.next_token
    return out


def update_policy(svc: Services, caller: Caller, attachment: str, policy_id: str, body: object) -> dict[str, Any]:
    att, name, rec = _existing(svc, caller, attachment, policy_id, "iam.denypolicies.update")
    data = _normalise(body)
    _check_etag(body.get("etag") if isinstance(body, Mapping) else None, rec, "policy.etag")
    now = rfc3339(svc.clock())
    stored = {"name": name, "uid": rec.data.get("uid", ""), **data, "createTime": rec.data.get("createTime", now),
              "updateTime": now, "attachmentPoint": att.decoded}
    op, op_put = _operation(name, {k: v for k, v in stored.items() if k != "attachmentPoint"}, now, caller)
    rev = svc.commit(caller, puts=[Put(KIND, name, stored, parent=att.full), op_put],
                     expect=[Expect(KIND, name, rec.revision)], method=_METHOD + "UpdatePolicy", service=SERVICE,
                     resource_name=name, request={"policy": body})
    op["response"]["etag"] = etag_for(rev)
    return op


def delete_policy(svc: Services, caller: Caller, attachment: str, policy_id: str, etag: str | None
                  ) -> dict[str, Any]:
    _, name, rec = _existing(svc, caller, attachment, policy_id, "iam.denypolicies.delete")
    _check_etag(etag, rec, "etag")
    now = rfc3339(svc.clock())
    gone = {**_present(rec.data, rec.revision), "deleteTime": now}
    op, op_put = _operation(name, gone, now, caller)
    svc.commit(caller, puts=[op_put], deletes=[Delete(KIND, name)], expect=[Expect(KIND, name, rec.revision)],
               method=_METHOD + "DeletePolicy", service=SERVICE, resource_name=name,
               request={"name": name, **({"etag": etag} if etag else {})})
    return op


def get_operation(svc: Services, caller: Caller, attachment: str, policy_id: str, op_id: str) -> dict[str, Any]:
    att = parse_attachment(svc, attachment, "name")
    svc.authorize(caller, "iam.denypolicies.get", att.full, service=SERVICE, shown=att.shown)
    name = f"{att.prefix}{policy_id}/operations/{op_id}"
    rec = svc.runtime.store.get("operation", name)
    if rec is None:
        raise NotFound(f"Operation {name} not found.", field="name")
    return {k: v for k, v in rec.data.items() if k != "keycardCaller"}
