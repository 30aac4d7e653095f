"""getIamPolicy / setIamPolicy / testIamPermissions, the same for every resource type.

Semantics (Google's, plus one safety net):
- setIamPolicy replaces the policy; ``updateMask`` (default ``bindings,etag``) limits what changes;
- an ``etag`` that is not the current one → 409 ABORTED, nothing written; no etag → overwrite;
- conditions require version 3; getIamPolicy with requestedPolicyVersion 1 on a policy with
  conditions is refused (400) instead of silently dropping them;
- Google's limits: 1,500 principals per policy (every member of every binding counts), of which
  250 may be groups or domains, 12 logical operators per condition; answered with 400 naming
  the limit and the counts;
- safer than Google: a write that would take away the caller's own setIamPolicy on the resource
  is refused unless the request says it means it (``X-Keycard-Allow-Lockout: true``).

keycard extension: ``:keycardAddIamPolicyBinding`` / ``:keycardRemoveIamPolicyBinding`` (:func:`modify_binding`)
add or remove members of one binding atomically on the server — a compare-and-swap through the resource's own
setIamPolicy path (same permission, validation, lockout guard and audit record), retried on a concurrent change,
so clients need no read-modify-write loop of their own.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from keycard import names
from keycard.engine.conditions import MAX_LOGIC_OPERATORS
from keycard.engine.model import AllowPolicy, parse_allow_policy
from keycard.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from keycard.runtime import etag_for, revision_from_etag
from keycard.services.common import Caller, Services
from keycard.store.base import ABORTED_MESSAGE, Expect, Put

__all__ = ["get_iam_policy", "modify_binding", "policy_delta", "set_iam_policy", "test_iam_permissions"]

MAX_PRINCIPALS = 1500
MAX_GROUPS_DOMAINS = 250
MASKABLE = {"bindings", "etag", "auditConfigs", "audit_configs", "version"}


def _stored(svc: Services, resource: str) -> tuple[dict[str, Any], int]:
    """The policy record and its revision, read from the store."""
    rec = svc.runtime.store.get("iam_policy", resource)
    if rec is None:
        return {"version": 1}, 0
    return dict(rec.data), rec.revision


def _mirrored(svc: Services, resource: str) -> tuple[dict[str, Any], int]:
    """The policy record and its revision from this replica's mirror (Runtime.iam_policy), as of the revision
    it has applied: what a store read gave at that revision, and the policy this replica's permission checks
    use. As fresh as those: this replica's own writes are applied before they answer, other replicas' within
    the change feed's delay (X-Keycard-Revision waits for a given one)."""
    rec = svc.runtime.iam_policy(resource)
    if rec is None:
        return {"version": 1}, 0
    return dict(rec.data), rec.revision


def _for_write(svc: Services, resource: str, etag: object) -> tuple[dict[str, Any], int]:
    """The policy a setIamPolicy with ``etag`` builds on. When the etag names the mirror's revision the
    mirror's record is the one the etag was read from, and the commit's precondition (that revision)
    guarantees it is still the stored one, or answers 409 ABORTED; otherwise the store is read."""
    if isinstance(etag, str) and etag:
        current, rev = _mirrored(svc, resource)
        with contextlib.suppress(InvalidArgument):
            if revision_from_etag(etag) == rev:
                return current, rev
    return _stored(svc, resource)


def _present(policy: Mapping[str, Any], revision: int) -> dict[str, Any]:
    out: dict[str, Any] = {"version": policy.get("version", 1)}
    if policy.get("bindings"):
        out["bindings"] = policy["bindings"]
    if policy.get("auditConfigs"):
        out["auditConfigs"] = policy["auditConfigs"]
    out["etag"] = etag_for(revision)
    return out


def requested_version(value: object, field: str = "options.requestedPolicyVersion") -> int:
    if value in (None, ""):
        return 0
    try:
        v = int(str(value))
    except ValueError:
        v = -1
    if v not in (0, 1, 3):
        raise InvalidArgument(f"Invalid {field} {value!r}: use 1 or 3.", field=field)
    return v


def get_iam_policy(svc: Services, caller: Caller, resource: str, *, permission: str, service: str,
                   version: int = 0, shown: str | None = None) -> dict[str, Any]:
    svc.authorize(caller, permission, resource, service=service, shown=shown)
    policy, rev = _mirrored(svc, resource)
    has_cond = any(b.get("condition") for b in policy.get("bindings", []))
    if has_cond and version < 3:
        raise InvalidArgument("Invalid options.requestedPolicyVersion: the policy has conditional role bindings; "
                              "request version 3 (options.requestedPolicyVersion=3) so they are not dropped.",
                              field="options.requestedPolicyVersion", reason="POLICY_VERSION_TOO_LOW")
    return _present(policy, rev)


def _stale_etag() -> Aborted:
    return Aborted(ABORTED_MESSAGE, reason="ETAG_MISMATCH")


# The fields of a google.iam.v1.Policy and its bindings that a policy without auditConfigs may hold: none is a
# secret, and parse_allow_policy has checked that roles and members are strings.
_POLICY_FIELDS = frozenset({"version", "bindings", "etag"})
_BINDING_FIELDS = frozenset({"role", "members", "condition"})
_CONDITION_FIELDS = frozenset({"expression", "title", "description", "location"})


def _plain_policy(raw: Mapping[str, Any]) -> bool:
    """Is ``raw`` (a request's policy that parse_allow_policy accepted) made only of a policy's own fields,
    so that recording it in the audit log needs no redaction walk? Anything else (auditConfigs, unknown
    fields) is redacted as every other request is."""
    if not raw.keys() <= _POLICY_FIELDS:
        return False
    for b in raw.get("bindings") or ():
        if not isinstance(b, Mapping) or not b.keys() <= _BINDING_FIELDS:
            return False
        cond = b.get("condition")
        if cond is not None and (not isinstance(cond, Mapping) or not cond.keys() <= _CONDITION_FIELDS
                                 or not all(isinstance(v, str) for v in cond.values())):
            return False
    return True


def _mask(value: object) -> set[str]:
    if value in (None, ""):
        return {"bindings", "etag"}
    if isinstance(value, Mapping):
        value = ",".join(value.get("paths", []))
    if not isinstance(value, str):
        raise InvalidArgument("Invalid updateMask: expected a comma-separated list of fields.", field="updateMask")
    fields = {f.strip() for f in value.split(",") if f.strip()}
    bad = fields - MASKABLE
    if bad:
        raise InvalidArgument(f"Invalid updateMask: unknown field(s) {', '.join(sorted(bad))}; use bindings, etag, "
                              "auditConfigs.", field="updateMask")
    return {"auditConfigs" if f == "audit_configs" else f for f in fields}


def check_limits(policy: AllowPolicy) -> None:
    members = sum(len(b.members) for b in policy.bindings)
    groups = sum(1 for b in policy.bindings for m in b.members if m.startswith(("group:", "domain:")))
    if members > MAX_PRINCIPALS:
        raise InvalidArgument(f"Invalid policy.bindings: the policy has {members} principals; the limit is "
                              f"{MAX_PRINCIPALS} (every member of every binding counts). Grant to a group instead.",
                              field="policy.bindings", reason="POLICY_PRINCIPAL_LIMIT")
    if groups > MAX_GROUPS_DOMAINS:
        raise InvalidArgument(f"Invalid policy.bindings: the policy has {groups} group and domain principals; the "
                              f"limit is {MAX_GROUPS_DOMAINS}.", field="policy.bindings",
                              reason="POLICY_GROUP_LIMIT")
    for i, b in enumerate(policy.bindings):
        if b.condition is not None and b.condition.compiled is not None \
                and b.condition.compiled.logic_operators > MAX_LOGIC_OPERATORS:
            n = b.condition.compiled.logic_operators
            fld = f"policy.bindings[{i}].condition.expression"
            raise InvalidArgument(f"Invalid {fld}: {n} logical operators; the limit is {MAX_LOGIC_OPERATORS}.",
                                  field=fld, reason="CONDITION_LOGIC_OPERATOR_LIMIT")


def policy_delta(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Cloud Audit Logs' serviceData.policyDelta.bindingDeltas.

    Members are compared per (role, condition); a group whose members did not change (the usual case: a
    write changes one or two bindings) is skipped without looking at its members one by one."""
    def groups(p: Mapping[str, Any]) -> dict[tuple[str, str], list[str]]:
        out: dict[tuple[str, str], list[str]] = {}
        for b in p.get("bindings", []):
            cond = b.get("condition", {}).get("expression", "") if b.get("condition") else ""
            key = (b["role"], cond)
            members = b.get("members", [])
            have = out.get(key)
            out[key] = list(members) if have is None else [*have, *members]
        return out
    old_groups, new_groups = groups(old), groups(new)
    before: set[tuple[str, str, str]] = set()
    after: set[tuple[str, str, str]] = set()
    for key in old_groups.keys() | new_groups.keys():
        was, now = old_groups.get(key, []), new_groups.get(key, [])
        if was == now:
            continue
        (role, cond), gone, came = key, set(was) - set(now), set(now) - set(was)
        before.update((role, m, cond) for m in gone)
        after.update((role, m, cond) for m in came)
    deltas = []
    for action, items in (("REMOVE", before), ("ADD", after)):
        for role, member, cond in sorted(items):
            d: dict[str, Any] = {"action": action, "role": role, "member": member}
            if cond:
                d["condition"] = {"expression": cond}
            deltas.append(d)
    return {"@type": "type.googleapis.com/google.iam.v1.logging.AuditData",
            "policyDelta": {"bindingDeltas": deltas}}


def set_iam_policy(svc: Services, caller: Caller, resource: str, body: Mapping[str, Any], *, permission: str,
                   service: str, method: str, allow_lockout: bool = False,
                   validate_members: Any = None, shown: str | None = None) -> dict[str, Any]:
    svc.authorize(caller, permission, resource, service=service, shown=shown)
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected {\"policy\": {...}}.", field="policy")
    raw = body.get("policy")
    if not isinstance(raw, Mapping):
        raise InvalidArgument("Invalid policy: the request needs a policy object.", field="policy")
    mask = _mask(body.get("updateMask"))
    parsed = parse_allow_policy(raw, "policy")
    eng = svc.runtime.engine
    current, rev = _for_write(svc, resource, raw.get("etag") if "etag" in mask else None)
    kept_roles = {b.get("role") for b in current.get("bindings", [])}
    for i, b in enumerate(parsed.bindings):
        role = eng.get_role(b.role)
        # A binding of a deleted role that is already in the policy may stay (it grants nothing), as in Google.
        if role is None or (role.deleted and b.role not in kept_roles):
            raise InvalidArgument(f"Invalid policy.bindings[{i}].role: role {b.role} does not exist"
                                  + (" (it was deleted)" if role is not None else "") + ".",
                                  field=f"policy.bindings[{i}].role", reason="UNKNOWN_ROLE")
        scope = names.role_scope(b.role)
        if scope is not None and eng.canonical_name(scope) not in eng.ancestry(resource):
            raise InvalidArgument(f"Invalid policy.bindings[{i}].role: custom role {b.role} can only be granted "
                                  f"inside {scope.split('/', 3)[3]}.", field=f"policy.bindings[{i}].role",
                                  reason="ROLE_OUT_OF_SCOPE")
    check_limits(parsed)
    if validate_members is not None:
        validate_members(parsed)
    else:   # domain restricted sharing (iam.allowedPolicyMemberDomains); imported here to avoid a cycle
        from keycard.services.orgpolicy_api import validate_member_domains
        validate_member_domains(svc, resource, parsed)
    etag = raw.get("etag")
    if "etag" in mask and etag:
        if not isinstance(etag, str):
            raise InvalidArgument("Invalid policy.etag: expected the etag string from getIamPolicy.",
                                  field="policy.etag")
        if revision_from_etag(etag, "policy.etag") != rev:
            raise _stale_etag()
    new: dict[str, Any] = dict(current)
    new_json = parsed.to_json()
    if "bindings" in mask:
        new["bindings"] = new_json.get("bindings", [])
        new["version"] = new_json["version"]
    if "auditConfigs" in mask:
        new["auditConfigs"] = new_json.get("auditConfigs", [])
    if "version" in mask:
        new["version"] = new_json["version"]
    if any(b.get("condition") for b in new.get("bindings", [])):
        new["version"] = 3
    new.pop("etag", None)
    if not allow_lockout and caller.principal is not None:
        final = parsed if mask >= {"bindings"} and new.get("version") == parsed.version \
            else parse_allow_policy(new, "policy")
        if not _keeps(svc, caller.principal, permission, resource, final, caller.extra_members):
            raise FailedPrecondition(
                f"This change would remove your own {permission} on {resource}, locking you out. If you mean it, "
                "send the request again with the header 'X-Keycard-Allow-Lockout: true'.",
                reason="SELF_LOCKOUT", field="policy.bindings")
    # what parsing the stored record will give, when that is the request's policy: applied as is
    same = "bindings" in mask and new.get("version") == parsed.version \
        and [dict(a) for a in parsed.audit_configs] == list(new.get("auditConfigs") or [])
    ready = (dataclasses.replace(parsed, etag="") if parsed.etag else parsed) if same else None
    safe = isinstance(raw, dict) and _plain_policy(raw)
    try:
        revision = svc.commit(caller, puts=[Put("iam_policy", resource, new)],
                              expect=[Expect("iam_policy", resource, rev if rev else None)],
                              method=method, service=service, resource_name=resource.split("/", 3)[3],
                              request={"resource": resource, "policy": raw if safe else dict(raw)},
                              redacted=safe, service_data=policy_delta(current, new),
                              parsed={("iam_policy", resource): ready} if ready is not None else None)
    except Aborted:
        if "etag" in mask and etag:     # the etag's revision is no longer the stored one: as checked above
            raise _stale_etag() from None
        raise
    out = _present(new, revision)
    return out


MODIFY_ATTEMPTS = 20


def _binding_request(body: object, add: bool) -> tuple[str, list[str], dict[str, str] | None, bool]:
    """``{"binding": {"role", "members", "condition"?}, "allConditions"?: bool}`` → its parts (400 naming the
    field otherwise)."""
    if not isinstance(body, Mapping) or not isinstance(body.get("binding"), Mapping):
        raise InvalidArgument('Invalid request body: expected {"binding": {"role": ..., "members": [...]}}.',
                              field="binding")
    b = body["binding"]
    role, members, cond = b.get("role"), b.get("members"), b.get("condition")
    if not isinstance(role, str) or not role:
        raise InvalidArgument("Invalid binding.role: expected a role name, e.g. roles/viewer.", field="binding.role")
    if not isinstance(members, list) or not members or not all(isinstance(m, str) and m for m in members):
        raise InvalidArgument("Invalid binding.members: expected a non-empty list of principals, e.g. "
                              "[\"user:alice@example.com\"].", field="binding.members")
    condition: dict[str, str] | None = None
    if cond is not None:
        if not isinstance(cond, Mapping) or not isinstance(cond.get("expression"), str) \
                or not all(isinstance(v, str) for v in cond.values()):
            raise InvalidArgument("Invalid binding.condition: expected {expression, title?, description?}.",
                                  field="binding.condition")
        condition = {k: str(cond[k]) for k in ("expression", "title", "description") if cond.get(k)}
    every = body.get("allConditions", False)
    if not isinstance(every, bool) or (every and (add or condition is not None)):
        raise InvalidArgument("Invalid allConditions: a boolean, only when removing without a condition.",
                              field="allConditions")
    return role, list(dict.fromkeys(members)), condition, every


def _same_condition(a: object, b: Mapping[str, str] | None) -> bool:
    if not a and not b:
        return True
    if not isinstance(a, Mapping) or not b:
        return False
    return {k: str(v) for k, v in a.items() if v} == dict(b)


def _changed_bindings(bindings: Sequence[Mapping[str, Any]], role: str, members: list[str],
                      condition: dict[str, str] | None, add: bool, every: bool) -> list[dict[str, Any]] | None:
    """The policy's bindings with the change made, or None when it changes nothing."""
    out = [dict(b) for b in bindings]
    hits = [b for b in out if b.get("role") == role and (every or _same_condition(b.get("condition"), condition))]
    if add:
        if hits:
            missing = [m for m in members if m not in hits[0].get("members", [])]
            if not missing:
                return None
            hits[0]["members"] = [*hits[0].get("members", []), *missing]
        else:
            out.append({"role": role, "members": members, **({"condition": condition} if condition else {})})
        return out
    touched = False
    for b in hits:
        kept = [m for m in b.get("members", []) if m not in members]
        touched = touched or len(kept) != len(b.get("members", []))
        b["members"] = kept
    if not touched:
        return None
    return [b for b in out if b.get("members")]


def modify_binding(svc: Services, caller: Caller, resource: str, body: object, *, add: bool, permission: str,
                   service: str, write: Callable[[dict[str, Any]], dict[str, Any]],
                   shown: str | None = None) -> dict[str, Any]:
    """keycard's ``:keycardAddIamPolicyBinding`` / ``:keycardRemoveIamPolicyBinding`` on ``resource``.

    ``write(policy)`` is the resource's own setIamPolicy (it re-authorizes, validates, guards against
    self-lockout and records the audit entry); each attempt sends the etag it read, so a concurrent
    change makes it ABORTED and the change is made again on the new policy. Adding members that are
    there already writes nothing; removing members that are not there is 404 naming the binding.
    Returns the policy after the change (as setIamPolicy does)."""
    svc.authorize(caller, permission, resource, service=service, shown=shown)
    role, members, condition, every = _binding_request(body, add)
    for _ in range(MODIFY_ATTEMPTS):
        current, rev = _stored(svc, resource)
        bindings = _changed_bindings(current.get("bindings", []), role, members, condition, add, every)
        if bindings is None:
            if add:
                return _present(current, rev)
            what = f"condition {condition['expression']!r}" if condition else \
                ("any condition" if every else "no condition")
            raise NotFound(f"No binding of {role} with {', '.join(members)} and {what} on "
                           f"{(shown or resource).split('/', 3)[-1]}: nothing to remove.",
                           reason="BINDING_NOT_FOUND", field="binding")
        conditional = any(b.get("condition") for b in bindings)
        policy: dict[str, Any] = {"version": 3 if conditional else current.get("version", 1),
                                  "bindings": bindings, "etag": etag_for(rev)}
        try:
            return write(policy)
        except Aborted:
            continue
    raise Aborted(f"The policy of {(shown or resource).split('/', 3)[-1]} changed {MODIFY_ATTEMPTS} times while "
                  "this binding was being changed. Retry with exponential backoff.", reason="TOO_MANY_CONFLICTS")


# membership chains that do not depend on any allow policy (unlike, e.g., projectOwner:P convenience values)
_STABLE_MEMBERS = {"user", "group", "serviceAccount", "domain", "principal", "principalSet", "allUsers",
                   "allAuthenticatedUsers"}


def _keeps(svc: Services, principal: str, permission: str, resource: str, final: AllowPolicy,
           extra: frozenset[str] | None = None) -> bool:
    """Does ``principal`` still hold ``permission`` on ``resource`` once ``final`` is its allow policy
    (or not hold it now, so there is nothing to lose)?

    The what-if evaluation is needed only when the grant that gives the permission now could go away:
    a grant by an ancestor's policy cannot (it does not depend on ``resource``'s policy, and deny
    policies do not change with it), nor can an unconditional grant by a binding that ``final`` keeps
    (same role, same member, no condition) through a membership that no allow policy defines."""
    eng = svc.runtime.engine
    now = svc.clock()
    decision = eng.check(principal, permission, resource, time=now, extra_members=extra)
    if not decision.allowed:
        return True
    grant = decision.grant
    if grant is not None:
        if grant.resource != eng.canonical_name(resource):
            return True
        if grant.condition is None and all(m.split(":", 1)[0] in _STABLE_MEMBERS for m in grant.membership) \
                and any(b.role == grant.role and b.condition is None and grant.member in b.members
                        for b in final.bindings):
            return True
    return eng.check_with_policy(principal, permission, resource, at=resource, policy=final, time=now,
                                 extra_members=extra)


def test_iam_permissions(svc: Services, caller: Caller, resource: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """No permission is needed to test one's own permissions (as in Google)."""
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected {\"permissions\": [...]}.", field="permissions")
    perms = body.get("permissions", [])
    if not isinstance(perms, list):
        raise InvalidArgument("Invalid permissions: expected a list of permission names.", field="permissions")
    if len(perms) > 100:
        raise InvalidArgument(f"Invalid permissions: {len(perms)} given; at most 100 per request.",
                              field="permissions")
    checked: Sequence[str] = [names.parse_permission(p, f"permissions[{i}]") for i, p in enumerate(perms)]
    granted = svc.runtime.engine.test_iam_permissions(caller.principal, resource, checked, time=svc.clock(),
                                                      extra_members=caller.extra_members)
    return {"permissions": granted} if granted else {}
