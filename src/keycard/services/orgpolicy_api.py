"""Organization Policy v2 (``orgpolicy.googleapis.com``): constraints, policies, effective policies.

Policies are records of kind ``org_policy`` named ``{organizations/N|folders/N|projects/NUMBER}/policies/
CONSTRAINT`` (projects by number, whatever the request said), with ``parent`` = the node's full
resource name and the policy's JSON (``name``, ``spec``, ``dryRunSpec``) as data; etags derive from
the record's revision. Evaluation is :mod:`keycard.services.orgpolicy` (pure); :func:`effective`
feeds it the policies on a resource's ancestry, for this API and for the services that enforce
constraints (setIamPolicy's domain restricted sharing, service-account keys).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from keycard import names
from keycard.engine.model import AllowPolicy
from keycard.errors import Aborted, AlreadyExists, FailedPrecondition, InvalidArgument, KeycardError, NotFound
from keycard.runtime import etag_for, revision_from_etag
from keycard.services import orgpolicy
from keycard.services import resourcemanager as crm
from keycard.services.common import Caller, Services, parse_page_size, rfc3339
from keycard.store.base import Delete, Expect, Put, Record

__all__ = [
    "SERVICE",
    "Node",
    "create_policy",
    "delete_policy",
    "effective",
    "get_effective_policy",
    "get_policy",
    "list_constraints",
    "list_policies",
    "node",
    "update_policy",
    "validate_member_domains",
]

log = logging.getLogger("keycard.orgpolicy")

SERVICE = "orgpolicy.googleapis.com"
KIND = "org_policy"
_METHOD = "google.cloud.orgpolicy.v2.OrgPolicy."
_MASKABLE = {"spec": "spec", "dryRunSpec": "dryRunSpec", "dry_run_spec": "dryRunSpec"}


# ======================================================================================== nodes

@dataclass(frozen=True, slots=True)
class Node:
    """An organization, folder or project named in a request path."""

    full: str          # canonical full name (projects by number when known)
    relative: str      # canonical relative name: organizations/N, folders/N, projects/NUMBER
    shown: str         # full name as the caller wrote it (never reveals what an id resolved to)


def node(svc: Services, kind: str, ident: str) -> Node:
    """``organizations``/``folders``/``projects`` + id from the path → Node (400 on a malformed name)."""
    short = f"{kind}/{ident}"
    rn = names.parse_resource(short, "parent")
    if not rn.is_container:
        raise InvalidArgument(f"Invalid parent {short!r}: expected organizations/N, folders/N or projects/P.",
                              field="parent")
    fullname = crm.resolve_project(svc, short) if kind == "projects" else rn.full
    return Node(fullname, fullname.split("/", 3)[3], rn.full)


def _require_node(svc: Services, n: Node) -> None:
    rec = svc.runtime.store.get("resource", n.full)
    if rec is None or rec.deleted or rec.data.get("state", "ACTIVE") != "ACTIVE":
        raise NotFound(f"Resource {n.shown.split('/', 3)[3]} not found.", field="parent")


def _canonical_relative(svc: Services, relative: str) -> str:
    if relative.startswith("projects/"):
        return crm.resolve_project(svc, relative).split("/", 3)[3]
    return relative


def _policy_name(n: Node, constraint: str) -> str:
    return f"{n.relative}/policies/{constraint}"


def _constraint(value: str) -> str:
    short = value.removeprefix("constraints/")
    if short not in orgpolicy.CONSTRAINTS:
        raise InvalidArgument(f"Invalid name: constraint {short!r} is not supported; keycard supports "
                              f"{', '.join(sorted(orgpolicy.CONSTRAINTS))}.", field="name",
                              reason="UNKNOWN_CONSTRAINT")
    return short


# ===================================================================================== evaluation

def _load(rec: Record | None) -> orgpolicy.OrgPolicy | None:
    if rec is None or rec.deleted:
        return None
    try:
        return orgpolicy.parse_policy(rec.data, "policy")
    except KeycardError:
        # a record this version cannot read (written by a newer one?) must not break enforcement
        log.exception("cannot read org policy %s at revision %s; ignoring it", rec.name, rec.revision)
        return None


def _parse_mirrored(name: str, data: Mapping[str, Any]) -> orgpolicy.OrgPolicy | None:
    try:
        return orgpolicy.parse_policy(data, "policy")
    except KeycardError:
        log.exception("cannot read org policy %s; ignoring it", name)
        return None


def effective(svc: Services, constraint: str, resource: str) -> orgpolicy.Effective:
    """The effective policy of ``constraint`` on ``resource`` (a full resource name).

    Walks the resource's ancestry (nearest first) and takes each organization, folder and project's
    policy for the constraint from the runtime's mirror of the store.
    """
    info = orgpolicy.CONSTRAINTS.get(constraint.removeprefix("constraints/"))
    if info is None:
        raise InvalidArgument(f"Invalid constraint {constraint!r}: not supported.", field="constraint",
                              reason="UNKNOWN_CONSTRAINT")
    mirrored = svc.runtime.org_policies        # kept current from the change feed, like the engine
    chain: list[tuple[str, orgpolicy.OrgPolicy | None]] = []
    for ancestor in svc.runtime.engine.ancestry(resource):
        rn = names.parse_resource(ancestor)
        if not rn.is_container:
            continue
        name = f"{rn.relative}/policies/{info.name}"
        data = mirrored.get(name)
        chain.append((rn.full, _parse_mirrored(name, data) if data is not None else None))
    return orgpolicy.effective_policy(info.name, chain)


def validate_member_domains(svc: Services, resource: str, policy: AllowPolicy) -> None:
    """Domain restricted sharing (``iam.allowedPolicyMemberDomains``) for setIamPolicy on ``resource``.

    Members the stored policy already holds stay (the constraint is not retroactive, as in Google);
    every member the new policy adds must be allowed, else 400 FAILED_PRECONDITION naming them.
    """
    eff = effective(svc, "iam.allowedPolicyMemberDomains", resource)
    if not eff.restricts:
        return
    ids: dict[str, str] = {}
    inst = svc.runtime.store.get("installation", "default")
    if inst is not None and inst.data.get("domain") and inst.data.get("customerId"):
        ids[str(inst.data["domain"])] = str(inst.data["customerId"])
    current = svc.runtime.store.get("iam_policy", resource)
    existing = {str(m) for b in (current.data.get("bindings", []) if current else []) for m in b.get("members", [])}
    bad = sorted({m for b in policy.bindings for m in b.members
                  if m not in existing and not orgpolicy.member_domain_allowed(eff, m, customer_ids_by_domain=ids)})
    if not bad:
        return
    where = eff.source.split("/", 3)[3] if eff.source else "the organization"
    raise FailedPrecondition(
        "One or more users named in the policy do not belong to a permitted customer: "
        f"{', '.join(bad)}. The organization policy constraint constraints/iam.allowedPolicyMemberDomains "
        f"(set on {where}) restricts which domains may be granted roles; remove these members or change "
        "that policy.", reason="ORG_POLICY_CONSTRAINT_VIOLATED", field="policy.bindings",
        metadata={"constraint": "constraints/iam.allowedPolicyMemberDomains", "members": ",".join(bad)})


# ========================================================================================= reading

def _present(rec: Record) -> dict[str, Any]:
    out = dict(rec.data)
    etag = etag_for(rec.revision)
    for key in ("spec", "dryRunSpec"):
        if isinstance(out.get(key), Mapping):
            out[key] = {**out[key], "etag": etag}
    out["etag"] = etag
    return out


def list_constraints(svc: Services, caller: Caller, n: Node, page_size: object = None,
                     page_token: str = "") -> dict[str, Any]:
    svc.authorize(caller, "orgpolicy.constraints.list", n.full, service=SERVICE, shown=n.shown)
    _require_node(svc, n)
    size = parse_page_size(page_size, 100)
    items = orgpolicy.constraints(n.relative)
    start = 0
    if page_token:
        if not page_token.isdigit() or int(page_token) > len(items):
            raise InvalidArgument("Invalid pageToken: use the nextPageToken of the previous page.",
                                  field="pageToken")
        start = int(page_token)
    out: dict[str, Any] = {"constraints": items[start:start + size]}
    if start + size < len(items):
        out["nextPageToken"] = str(start + size)
    return out


def list_policies(svc: Services, caller: Caller, n: Node, page_size: object = None,
                  page_token: str = "") -> dict[str, Any]:
    svc.authorize(caller, "orgpolicy.policies.list", n.full, service=SERVICE, shown=n.shown)
    _require_node(svc, n)
    page = svc.runtime.store.list(KIND, parent=n.full, page_size=parse_page_size(page_size, 100), page_token=page_token)
    items = [_present(r) for r in page.records if not r.deleted]
    out: dict[str, Any] = {"policies": items} if items else {}
    if page.next_token:
        out["nextPageToken"] = page.next_token
    return out


def get_policy(svc: Services, caller: Caller, n: Node, constraint: str) -> dict[str, Any]:
    svc.authorize(caller, "orgpolicy.policy.get", n.full, service=SERVICE, shown=n.shown)
    name = _policy_name(n, _constraint(constraint))
    rec = svc.runtime.store.get(KIND, name)
    if rec is None or rec.deleted:
        raise NotFound(f"Policy {name} not found: no policy is set for this constraint on this resource "
                       "(getEffectivePolicy shows what applies).", field="name")
    return _present(rec)


def get_effective_policy(svc: Services, caller: Caller, n: Node, constraint: str) -> dict[str, Any]:
    svc.authorize(caller, "orgpolicy.policy.get", n.full, service=SERVICE, shown=n.shown)
    short = _constraint(constraint)
    _require_node(svc, n)
    return effective(svc, short, n.full).to_json(n.relative)


# ========================================================================================= writing

def _parse(svc: Services, n: Node, body: object, constraint: str | None) -> orgpolicy.OrgPolicy:
    """Validate a Policy body for ``n`` (and ``constraint``, when the path names one)."""
    if isinstance(body, Mapping) and body.get("name"):
        pol = orgpolicy.parse_policy(body, "policy")
        if _canonical_relative(svc, pol.parent) != n.relative:
            raise InvalidArgument(f"Invalid policy.name {body.get('name')!r}: the policy belongs to "
                                  f"{pol.parent}, not to {n.shown.split('/', 3)[3]}.", field="policy.name")
        if constraint is not None and pol.constraint != constraint:
            raise InvalidArgument(f"Invalid policy.name {body.get('name')!r}: the request is for {constraint}.",
                                  field="policy.name")
        return pol
    return orgpolicy.parse_policy(body, "policy", parent=n.relative, constraint=constraint)


def _stored(name: str, pol: orgpolicy.OrgPolicy, body: Mapping[str, Any], now: str, *,
            keep: Mapping[str, Any] | None = None, fields: set[str] | None = None) -> dict[str, Any]:
    """The record data: canonical name, and spec / dryRunSpec as given (stamped with updateTime)."""
    out: dict[str, Any] = {"name": name}
    given = {"spec": pol.spec if body.get("spec") is not None else None, "dryRunSpec": pol.dry_run_spec}
    for key, spec in given.items():
        if fields is not None and key not in fields:
            if keep is not None and isinstance(keep.get(key), Mapping):
                out[key] = dict(keep[key])
            continue
        if spec is not None:
            data = spec.to_json()
            data.pop("etag", None)
            data["updateTime"] = now
            out[key] = data
    if "spec" not in out and "dryRunSpec" not in out:
        raise InvalidArgument("Invalid policy.spec: required (the policy would be empty).", field="policy.spec")
    return out


def _check_etag(etag: object, rec: Record, fld: str) -> None:
    if etag in (None, ""):
        return
    if not isinstance(etag, str):
        raise InvalidArgument(f"Invalid {fld}: expected the etag string from policies.get.", field=fld)
    if revision_from_etag(etag, fld) != rec.revision:
        raise Aborted(f"The policy {rec.name} changed since it was read (etag mismatch). Read it again and retry "
                      "the read-modify-write.", reason="ETAG_MISMATCH", field=fld)


def create_policy(svc: Services, caller: Caller, n: Node, body: object) -> dict[str, Any]:
    svc.authorize(caller, "orgpolicy.policies.create", n.full, service=SERVICE, shown=n.shown)
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected a Policy.", field="policy")
    pol = _parse(svc, n, body, None)
    _require_node(svc, n)
    name = _policy_name(n, pol.constraint)
    rec = svc.runtime.store.get(KIND, name)
    if rec is not None and not rec.deleted:
        raise AlreadyExists(f"Policy {name} already exists; update it with policies.patch.",
                            reason="POLICY_ALREADY_EXISTS", field="policy.name")
    data = _stored(name, pol, body, rfc3339(svc.clock()))
    rev = svc.commit(caller, puts=[Put(KIND, name, data, parent=n.full)],
                     expect=[Expect(KIND, name, rec.revision if rec is not None else None)],
                     method=_METHOD + "CreatePolicy", service=SERVICE, resource_name=name,
                     request={"parent": n.shown.split("/", 3)[3], "policy": dict(body)})
    return _present(Record(KIND, name, data, rev, rev, n.full))


def _mask(value: object) -> set[str] | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise InvalidArgument("Invalid updateMask: expected a comma-separated list of fields.", field="updateMask")
    out = set()
    for item in (f.strip() for f in value.split(",") if f.strip()):
        key = _MASKABLE.get(item.removeprefix("policy."))
        if key is None:
            raise InvalidArgument(f"Invalid updateMask: unknown field {item!r}; use spec and/or dryRunSpec.",
                                  field="updateMask")
        out.add(key)
    return out or None


def update_policy(svc: Services, caller: Caller, n: Node, constraint: str, body: object,
                  update_mask: object = None) -> dict[str, Any]:
    svc.authorize(caller, "orgpolicy.policies.update", n.full, service=SERVICE, shown=n.shown)
    short = _constraint(constraint)
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected a Policy.", field="policy")
    fields = _mask(update_mask)
    pol = _parse(svc, n, body, short)
    name = _policy_name(n, short)
    rec = svc.runtime.store.get(KIND, name)
    if rec is None or rec.deleted:
        raise NotFound(f"Policy {name} not found; create it with policies.create.", field="policy.name")
    spec = body.get("spec")
    _check_etag(body.get("etag") or (spec.get("etag") if isinstance(spec, Mapping) else None), rec, "policy.etag")
    data = _stored(name, pol, body, rfc3339(svc.clock()), keep=rec.data, fields=fields)
    rev = svc.commit(caller, puts=[Put(KIND, name, data, parent=n.full)], expect=[Expect(KIND, name, rec.revision)],
                     method=_METHOD + "UpdatePolicy", service=SERVICE, resource_name=name,
                     request={"policy": dict(body), **({"updateMask": update_mask} if update_mask else {})})
    return _present(Record(KIND, name, data, rev, rec.created_revision, n.full))


def delete_policy(svc: Services, caller: Caller, n: Node, constraint: str, etag: str | None = None
                  ) -> dict[str, Any]:
    svc.authorize(caller, "orgpolicy.policies.delete", n.full, service=SERVICE, shown=n.shown)
    name = _policy_name(n, _constraint(constraint))
    rec = svc.runtime.store.get(KIND, name)
    if rec is None or rec.deleted:
        raise NotFound(f"Policy {name} not found.", field="name")
    _check_etag(etag, rec, "etag")
    svc.commit(caller, deletes=[Delete(KIND, name)], expect=[Expect(KIND, name, rec.revision)],
               method=_METHOD + "DeletePolicy", service=SERVICE, resource_name=name,
               request={"name": name, **({"etag": etag} if etag else {})})
    return {}
