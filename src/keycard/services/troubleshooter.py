"""Policy Troubleshooter (``POST /v1/iam:troubleshoot`` and ``POST /v3/iam:troubleshoot``), pure.

Both functions take an :class:`~keycard.engine.engine.Engine` and the JSON body of the request and
return the JSON body of Google's response, built from :meth:`Engine.explain`. They read no clock,
store or network: ``time`` (or v3's ``conditionContext.request.receiveTime``) is request.time for
IAM Conditions; without either the engine's clock is used.

Access states follow Google's meaning:

* a binding grants (``GRANTED``) when its role is usable and holds the permission, a member
  includes the principal and its condition — if any — is true;
* a condition that cannot be evaluated (keycard: the expression errors) makes the binding
  ``UNKNOWN_CONDITIONAL``; the same holds for a deny rule's denialCondition. Keycard's enforcement
  fails closed on such errors (no grant; deny), the troubleshooter reports "it depends";
* deny comes first: a deny rule that denies makes the overall answer ``NOT_GRANTED`` (v1) /
  ``CANNOT_ACCESS`` (v3) whatever the allow policies say.

Relevance (``HIGH`` / ``NORMAL``) is heuristic, as Google's: a binding or deny rule is ``HIGH``
when it grants/denies or would if only its other half matched (the role holds the permission but
no member includes the principal, or a member includes the principal but the role lacks the
permission); a membership is ``HIGH`` when the role holds the permission (so the membership
decides); the role's permission is ``HIGH`` when a member includes the principal.

v1 has no deny section. When deny rules decide, the v1 response carries keycard's additive
extension field ``keycardDenyExplanation``; GAPIC's REST transport parses responses with
``ignore_unknown_fields=True``, so Google's clients ignore it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from keycard import names
from keycard.engine.engine import Engine
from keycard.engine.explain import BindingExplanation, ConditionResult, DenyRuleExplanation, Explanation
from keycard.engine.hierarchy import permission_covered, permission_parts
from keycard.engine.model import AllowPolicy, Condition, DenyPolicy
from keycard.errors import InvalidArgument

__all__ = ["AccessTuple", "parse_access_tuple", "troubleshoot_v1", "troubleshoot_v3"]

_SA_SUFFIX = ".gserviceaccount.com"
_PREFIXES = ("user:", "serviceAccount:", "group:")
# v1 permission prefixes whose service FQDN is not PREFIX.googleapis.com
_PREFIX_TO_FQDN = {"resourcemanager": "cloudresourcemanager.googleapis.com"}
_INVALID_ARGUMENT = 3          # google.rpc.Code


# ============================================================================================ request

class AccessTuple:
    """A validated access tuple: keycard's member key, canonical resource name and v1 permission."""

    __slots__ = ("condition_context", "full_resource_name", "permission", "permission_fqdn", "principal",
                 "raw_permission", "raw_principal", "receive_time")

    def __init__(self, principal: str, full_resource_name: str, permission: str, *, raw_principal: str,
                 raw_permission: str, condition_context: dict[str, Any] | None = None,
                 receive_time: dt.datetime | None = None) -> None:
        self.principal = principal
        self.full_resource_name = full_resource_name
        self.permission = permission
        self.permission_fqdn = _permission_fqdn(permission)
        self.raw_principal = raw_principal
        self.raw_permission = raw_permission
        self.condition_context = condition_context
        self.receive_time = receive_time


def _bad(fld: str, value: object, what: str) -> InvalidArgument:
    shown = repr(value) if len(repr(value)) <= 120 else repr(value)[:117] + "...'"
    return InvalidArgument(f"Invalid {fld} {shown}: {what}.", field=fld)


def _required_str(obj: Mapping[str, Any], key: str, fld: str) -> str:
    value = obj.get(key)
    if value is None or value == "":
        raise InvalidArgument(f"Invalid {fld}: required.", field=fld)
    if not isinstance(value, str):
        raise _bad(fld, value, "expected a string")
    return value


def _principal(value: str, fld: str) -> str:
    """Google's bare email (or a ``user:``/``serviceAccount:``/``group:`` member) → keycard's member key."""
    text = value.strip()
    if text.startswith(_PREFIXES):
        member = text
    elif ":" in text or "/" in text:
        raise _bad(fld, value, "expected the principal's email, e.g. 'alice@example.com' or "
                               "'my-sa@my-project.iam.gserviceaccount.com' (or 'user:EMAIL', "
                               "'serviceAccount:EMAIL', 'group:EMAIL')")
    elif text.lower().endswith(_SA_SUFFIX):
        member = f"serviceAccount:{text}"
    else:
        member = f"user:{text}"
    try:
        return names.parse_member(member, fld)
    except InvalidArgument:
        raise _bad(fld, value, "expected an email address such as 'alice@example.com'") from None


def _permission_fqdn(permission: str) -> str:
    """v1 ``service.resource.verb`` → v2 ``SERVICE_FQDN/resource.verb``."""
    if "/" in permission:                        # custom-service permissions already name their service
        return permission
    prefix, rest = permission.split(".", 1)
    return f"{_PREFIX_TO_FQDN.get(prefix, prefix + '.googleapis.com')}/{rest}"


def _permission(value: str, fld: str, *, v2: bool) -> str:
    """A v1 permission; with ``v2`` also Google's v2 form ``SERVICE.googleapis.com/resource.verb``."""
    if v2 and "/" in value and value.split("/", 1)[0].endswith(".googleapis.com"):
        prefix, res, verb = names.parse_deny_permission(value, fld)
        if "*" in (res, verb):
            raise _bad(fld, value, "troubleshoot one permission, not a permission group with '*'")
        return names.parse_permission(f"{prefix}.{res}.{verb}", fld)
    return names.parse_permission(value, fld)


def _timestamp(value: object, fld: str) -> dt.datetime:
    if not isinstance(value, str):
        raise _bad(fld, value, "expected an RFC 3339 timestamp such as '2024-01-01T00:00:00Z'")
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.strip())      # nanoseconds → microseconds
    try:
        t = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "Zz" else text)
    except ValueError:
        raise _bad(fld, value, "expected an RFC 3339 timestamp such as '2024-01-01T00:00:00Z'") from None
    if t.tzinfo is None:
        raise _bad(fld, value, "the timestamp needs a time zone ('Z' or an offset)")
    return t.astimezone(dt.UTC)


def _condition_context(value: object, fld: str) -> tuple[dict[str, Any], dt.datetime | None]:
    """Validate v3's ConditionContext; return the cleaned JSON (echoed back) and request.receiveTime."""
    if not isinstance(value, Mapping):
        raise _bad(fld, value, "expected an object")
    out: dict[str, Any] = {}
    receive: dt.datetime | None = None
    shapes = {"resource": ("service", "name", "type"), "destination": ("ip", "port"), "request": ("receiveTime",)}
    for key, item in value.items():
        sub = f"{fld}.{key}"
        if key == "effectiveTags":
            continue                              # output only
        if key not in shapes:
            raise _bad(sub, key, f"unknown field; expected one of {', '.join(shapes)}")
        if not isinstance(item, Mapping):
            raise _bad(sub, item, "expected an object")
        clean: dict[str, Any] = {}
        for k, v in item.items():
            if k not in shapes[key]:
                raise _bad(f"{sub}.{k}", k, f"unknown field; expected one of {', '.join(shapes[key])}")
            if key == "destination" and k == "port":
                if isinstance(v, bool) or not isinstance(v, int | str) or not str(v).isdigit() \
                        or not 0 <= int(v) <= 65535:
                    raise _bad(f"{sub}.port", v, "expected a port number 0-65535")
                clean[k] = str(int(v))
            elif k == "receiveTime":
                receive = _timestamp(v, f"{sub}.receiveTime")
                clean[k] = v
            else:
                if not isinstance(v, str):
                    raise _bad(f"{sub}.{k}", v, "expected a string")
                clean[k] = v
        out[key] = clean
    return out, receive


def parse_access_tuple(request: object, *, v3: bool = False) -> AccessTuple:
    """Validate a troubleshoot request body; errors are InvalidArgument naming the field."""
    if not isinstance(request, Mapping):
        raise _bad("request", request, "expected a JSON object with accessTuple")
    at = request.get("accessTuple", request.get("access_tuple"))
    if at is None:
        raise InvalidArgument("Invalid accessTuple: required.", field="accessTuple")
    if not isinstance(at, Mapping):
        raise _bad("accessTuple", at, "expected an object with principal, fullResourceName and permission")
    raw_principal = _required_str(at, "principal", "accessTuple.principal")
    principal = _principal(raw_principal, "accessTuple.principal")
    key = "fullResourceName" if "fullResourceName" in at or "full_resource_name" not in at else "full_resource_name"
    resource = names.parse_resource(_required_str(at, key, "accessTuple.fullResourceName"),
                                    "accessTuple.fullResourceName").full
    raw_permission = _required_str(at, "permission", "accessTuple.permission")
    permission = _permission(raw_permission, "accessTuple.permission", v2=v3)
    ctx: dict[str, Any] | None = None
    receive: dt.datetime | None = None
    raw_ctx = at.get("conditionContext", at.get("condition_context"))
    if raw_ctx is not None:
        if not v3:
            raise InvalidArgument("Invalid accessTuple.conditionContext: Policy Troubleshooter v1 takes no "
                                  "condition context; use v3.", field="accessTuple.conditionContext")
        ctx, receive = _condition_context(raw_ctx, "accessTuple.conditionContext")
    return AccessTuple(principal, resource, permission, raw_principal=raw_principal,
                       raw_permission=raw_permission, condition_context=ctx, receive_time=receive)


# ========================================================================================= analysis

class _Binding:
    """One allow binding's verdict, shared by v1 and v3."""

    __slots__ = ("condition", "ex", "grants", "has_perm", "included", "relevance_high", "role_high",
                 "role_state", "state", "unknown")

    def __init__(self, ex: BindingExplanation, keys: frozenset[str], condition: Condition | None) -> None:
        self.ex = ex
        self.condition = condition
        self.role_state = "unknown" if ex.role_state == "unknown" else (
            "included" if ex.role_state == "ok" and ex.role_has_permission else "not-included")
        self.has_perm = self.role_state == "included"
        self.included = {m: m in keys for m in ex.members}
        matched = any(self.included.values())
        cond = ex.condition
        self.grants = ex.grants
        self.unknown = (not ex.grants and self.has_perm and matched and cond is not None and cond.value is None)
        self.state = "GRANTED" if self.grants else "UNKNOWN_CONDITIONAL" if self.unknown else "NOT_GRANTED"
        self.relevance_high = self.has_perm or matched
        self.role_high = matched

    def member_high(self, member: str) -> bool:
        if not self.has_perm:
            return False
        return self.included[member] or not any(self.included.values())


def _allow_state(states: Sequence[str]) -> str:
    if "GRANTED" in states:
        return "GRANTED"
    if "UNKNOWN_CONDITIONAL" in states:
        return "UNKNOWN_CONDITIONAL"
    return "NOT_GRANTED"


def _deny_state(d: DenyRuleExplanation) -> str:
    if not d.denies:
        return "NOT_DENIED"
    if d.condition is not None and d.condition.value is None:
        return "UNKNOWN_CONDITIONAL"
    return "DENIED"


def _combine_deny(states: Sequence[str]) -> str:
    if "DENIED" in states:
        return "DENIED"
    if "UNKNOWN_CONDITIONAL" in states:
        return "UNKNOWN_CONDITIONAL"
    return "NOT_DENIED"


def _overall(deny: str, allow: str) -> str:
    """Deny first, then allow: GRANTED / NOT_GRANTED / UNKNOWN_CONDITIONAL."""
    if deny == "DENIED" or allow == "NOT_GRANTED":
        return "NOT_GRANTED"
    if deny == "UNKNOWN_CONDITIONAL" or allow == "UNKNOWN_CONDITIONAL":
        return "UNKNOWN_CONDITIONAL"
    return "GRANTED"


def _identity_keys(engine: Engine, principal: str, extra: frozenset[str] | None = None) -> frozenset[str]:
    """Every member key that includes ``principal`` (itself, its domain, its groups, allUsers …, and the
    sets ``extra`` its credential carries)."""
    return frozenset(engine.identity_keys(principal, extra))


def _explain(engine: Engine, at: AccessTuple, time: dt.datetime | None, extra: frozenset[str] | None
             ) -> tuple[Explanation, frozenset[str]]:
    when = at.receive_time or time
    ex = engine.explain(at.principal, at.permission, at.full_resource_name, time=when, extra_members=extra)
    return ex, _identity_keys(engine, at.principal, extra)


def _bindings(engine: Engine, ex: Explanation, keys: frozenset[str]
              ) -> list[tuple[str, AllowPolicy, list[_Binding]]]:
    out = []
    for node in ex.nodes:
        if not node.has_policy:
            continue
        pol = engine.get_iam_policy(node.resource) or AllowPolicy(etag=node.etag)
        verdicts = [_Binding(b, keys, pol.bindings[b.index].condition if b.index < len(pol.bindings) else None)
                    for b in node.bindings]
        out.append((node.resource, pol, verdicts))
    return out


def _status(error: str | None) -> dict[str, Any]:
    return {"code": _INVALID_ARGUMENT, "message": error or "the condition could not be evaluated"}


def _condition_explanation(res: ConditionResult | None) -> dict[str, Any] | None:
    if res is None:
        return None
    out: dict[str, Any] = {"value": res.value}
    if res.value is None:
        out["errors"] = [_status(res.error)]
    return out


# =============================================================================================== v1

def troubleshoot_v1(engine: Engine, request: Mapping[str, Any], *, time: dt.datetime | None = None,
                    extra_members: frozenset[str] | None = None) -> dict[str, Any]:
    """``POST /v1/iam:troubleshoot``: Google's TroubleshootIamPolicyResponse (v1) as JSON."""
    at = parse_access_tuple(request)
    ex, keys = _explain(engine, at, time, extra_members)
    explained: list[dict[str, Any]] = []
    allow_states: list[str] = []
    for resource, pol, verdicts in _bindings(engine, ex, keys):
        bex = []
        for v in verdicts:
            item: dict[str, Any] = {
                "access": v.state,
                "role": v.ex.role,
                "rolePermission": {"included": "ROLE_PERMISSION_INCLUDED",
                                   "not-included": "ROLE_PERMISSION_NOT_INCLUDED",
                                   "unknown": "ROLE_PERMISSION_UNKNOWN_INFO_DENIED"}[v.role_state],
                "rolePermissionRelevance": "HIGH" if v.role_high else "NORMAL",
                "memberships": {m: {"membership": "MEMBERSHIP_INCLUDED" if inc else "MEMBERSHIP_NOT_INCLUDED",
                                    "relevance": "HIGH" if v.member_high(m) else "NORMAL"}
                                for m, inc in v.included.items()},
                "relevance": "HIGH" if v.relevance_high else "NORMAL",
            }
            if v.condition is not None:
                item["condition"] = v.condition.to_json()
            bex.append(item)
        state = _allow_state([v.state for v in verdicts])
        allow_states.append(state)
        explained.append({
            "access": state,
            "fullResourceName": resource,
            "policy": pol.to_json(),
            "bindingExplanations": bex,
            "relevance": "HIGH" if any(v.relevance_high for v in verdicts) else "NORMAL",
        })
    deny = _combine_deny([_deny_state(d) for d in ex.deny_rules])
    out: dict[str, Any] = {"access": _overall(deny, _allow_state(allow_states)), "explainedPolicies": explained}
    if deny != "NOT_DENIED":
        out["keycardDenyExplanation"] = [_keycard_deny_rule(d) for d in ex.deny_rules
                                         if d.permission_matches or d.principal_match]
    return out


def _keycard_deny_rule(d: DenyRuleExplanation) -> dict[str, Any]:
    out: dict[str, Any] = {
        "denyAccessState": _deny_state(d),
        "attachmentPoint": d.attachment[2:],
        "policy": d.policy,
        "ruleIndex": d.rule_index,
        "permissionListed": d.permission_matches,
        "permissionExcepted": d.permission_excepted,
        "principalMatched": d.principal_match,
        "membership": list(d.membership),
        "principalExcepted": d.principal_excepted,
    }
    if d.condition is not None:
        out["condition"] = {"expression": d.condition.expression, "value": d.condition.value}
        if d.condition.error:
            out["condition"]["error"] = d.condition.error
    return out


# =============================================================================================== v3

def _h(high: bool) -> str:
    return "HEURISTIC_RELEVANCE_HIGH" if high else "HEURISTIC_RELEVANCE_NORMAL"


def _match(matched: bool, high: bool) -> dict[str, Any]:
    return {"membership": "MEMBERSHIP_MATCHED" if matched else "MEMBERSHIP_NOT_MATCHED", "relevance": _h(high)}


def _perm_match(matched: bool, high: bool) -> dict[str, Any]:
    return {"permissionMatchingState": "PERMISSION_PATTERN_MATCHED" if matched else "PERMISSION_PATTERN_NOT_MATCHED",
            "relevance": _h(high)}


def _str_list(value: object) -> list[str]:
    return [x for x in value if isinstance(x, str)] if isinstance(value, Sequence) and not isinstance(value, str) \
        else []


def _deny_policy_json(attachment: str, pol: DenyPolicy) -> dict[str, Any]:
    """google.iam.v2.Policy JSON for a deny policy (only the fields Google's schema has)."""
    name = pol.name if pol.name.startswith("policies/") else \
        f"policies/{quote(attachment[2:], safe='')}/denypolicies/{pol.name}"
    out: dict[str, Any] = {"name": name, "kind": "DenyPolicy"}
    raw = pol.raw
    for key in ("uid", "displayName", "etag", "createTime", "updateTime"):
        value = raw.get(key)
        if isinstance(value, str) and value:
            out[key] = value
    if pol.display_name:
        out["displayName"] = pol.display_name
    if pol.etag:
        out["etag"] = pol.etag
    rules = []
    for rule in pol.rules:
        rraw = rule.raw
        dr = rraw.get("denyRule", rraw.get("deny_rule"))
        dr = dr if isinstance(dr, Mapping) else {}
        body: dict[str, Any] = {}
        for camel, snake in (("deniedPrincipals", "denied_principals"),
                             ("exceptionPrincipals", "exception_principals"),
                             ("deniedPermissions", "denied_permissions"),
                             ("exceptionPermissions", "exception_permissions")):
            items = _str_list(dr.get(camel, dr.get(snake)))
            if items:
                body[camel] = items
        if rule.condition is not None:
            body["denialCondition"] = rule.condition.to_json()
        entry: dict[str, Any] = {"denyRule": body}
        if rule.description:
            entry["description"] = rule.description
        rules.append(entry)
    if rules:
        out["rules"] = rules
    return out


def _deny_rule_v3(d: DenyRuleExplanation, pol: DenyPolicy, keys: frozenset[str],
                  parts: tuple[str, str, str]) -> dict[str, Any]:
    state = _deny_state(d)
    listed = d.permission_matches and not d.permission_excepted
    principal_in = d.principal_match is not None and d.principal_excepted is None
    out: dict[str, Any] = {
        "denyAccessState": f"DENY_ACCESS_STATE_{state}",
        "combinedDeniedPermission": _perm_match(d.permission_matches, principal_in),
        "combinedExceptionPermission": _perm_match(d.permission_excepted, principal_in and d.permission_matches),
        "combinedDeniedPrincipal": _match(d.principal_match is not None, listed),
        "combinedExceptionPrincipal": _match(d.principal_excepted is not None, listed),
        "relevance": _h(state != "NOT_DENIED" or listed or principal_in),
    }
    rule = pol.rules[d.rule_index] if d.rule_index < len(pol.rules) else None
    if rule is not None:
        dr = rule.raw.get("denyRule", rule.raw.get("deny_rule"))
        dr = dr if isinstance(dr, Mapping) else {}
        for camel, snake, kind in (("deniedPermissions", "denied_permissions", "perm"),
                                   ("exceptionPermissions", "exception_permissions", "perm"),
                                   ("deniedPrincipals", "denied_principals", "principal"),
                                   ("exceptionPrincipals", "exception_principals", "principal")):
            entries: dict[str, Any] = {}
            for raw in _str_list(dr.get(camel, dr.get(snake))):
                if kind == "perm":
                    hit = permission_covered(frozenset({names.parse_deny_permission(raw, camel)}), parts)
                    entries[raw] = _perm_match(hit, principal_in and (hit or camel == "deniedPermissions"))
                else:
                    hit = names.parse_deny_principal(raw, camel) in keys
                    entries[raw] = _match(hit, listed and (hit or camel == "deniedPrincipals"))
            if entries:
                out[camel] = entries
        if rule.condition is not None:
            out["condition"] = rule.condition.to_json()
    cexp = _condition_explanation(d.condition)
    if cexp is not None:
        out["conditionExplanation"] = cexp
    return out


def troubleshoot_v3(engine: Engine, request: Mapping[str, Any], *, time: dt.datetime | None = None,
                    extra_members: frozenset[str] | None = None) -> dict[str, Any]:
    """``POST /v3/iam:troubleshoot``: Google's TroubleshootIamPolicyResponse (iam v3) as JSON."""
    at = parse_access_tuple(request, v3=True)
    ex, keys = _explain(engine, at, time, extra_members)

    # ---- allow
    explained: list[dict[str, Any]] = []
    allow_states: list[str] = []
    for resource, pol, verdicts in _bindings(engine, ex, keys):
        bex = []
        for v in verdicts:
            matched = any(v.included.values())
            item: dict[str, Any] = {
                "allowAccessState": f"ALLOW_ACCESS_STATE_{v.state}",
                "role": v.ex.role,
                "rolePermission": {"included": "ROLE_PERMISSION_INCLUDED",
                                   "not-included": "ROLE_PERMISSION_NOT_INCLUDED",
                                   "unknown": "ROLE_PERMISSION_UNKNOWN_INFO"}[v.role_state],
                "rolePermissionRelevance": _h(v.role_high),
                "combinedMembership": _match(matched, v.has_perm),
                "memberships": {m: _match(inc, v.member_high(m)) for m, inc in v.included.items()},
                "relevance": _h(v.relevance_high),
            }
            if v.condition is not None:
                item["condition"] = v.condition.to_json()
            cexp = _condition_explanation(v.ex.condition)
            if cexp is not None:
                item["conditionExplanation"] = cexp
            bex.append(item)
        state = _allow_state([v.state for v in verdicts])
        allow_states.append(state)
        explained.append({
            "allowAccessState": f"ALLOW_ACCESS_STATE_{state}",
            "fullResourceName": resource,
            "bindingExplanations": bex,
            "relevance": _h(any(v.relevance_high for v in verdicts)),
            "policy": pol.to_json(),
        })
    allow = _allow_state(allow_states)

    # ---- deny, grouped by attachment point (resource first) and policy
    parts = permission_parts(at.permission)
    policies: dict[str, dict[str, DenyPolicy]] = {}
    grouped: dict[str, dict[str, list[DenyRuleExplanation]]] = {}
    for d in ex.deny_rules:
        if d.attachment not in policies:
            policies[d.attachment] = {p.name: p for p in engine.deny_policies(d.attachment)}
        grouped.setdefault(d.attachment, {}).setdefault(d.policy, []).append(d)
    resources = []
    all_states: list[str] = []
    for attachment in [a for a in ex.ancestry if a in grouped]:
        pols = []
        res_states: list[str] = []
        for pname, rules in grouped[attachment].items():
            dpol = policies[attachment][pname]
            rex = [_deny_rule_v3(d, dpol, keys, parts) for d in rules]
            states = [_deny_state(d) for d in rules]
            pstate = _combine_deny(states)
            res_states.append(pstate)
            pols.append({"denyAccessState": f"DENY_ACCESS_STATE_{pstate}",
                         "policy": _deny_policy_json(attachment, dpol),
                         "ruleExplanations": rex,
                         "relevance": _h(any(r["relevance"] == _h(True) for r in rex))})
        rstate = _combine_deny(res_states)
        all_states.append(rstate)
        resources.append({"denyAccessState": f"DENY_ACCESS_STATE_{rstate}",
                          "fullResourceName": attachment,
                          "explainedPolicies": pols,
                          "relevance": _h(any(p["relevance"] == _h(True) for p in pols))})
    deny = _combine_deny(all_states)

    overall = _overall(deny, allow)
    tuple_out: dict[str, Any] = {"principal": at.raw_principal, "fullResourceName": at.full_resource_name,
                                 "permission": at.raw_permission, "permissionFqdn": at.permission_fqdn}
    if at.condition_context is not None:
        tuple_out["conditionContext"] = at.condition_context
    return {
        "overallAccessState": {"GRANTED": "CAN_ACCESS", "NOT_GRANTED": "CANNOT_ACCESS",
                               "UNKNOWN_CONDITIONAL": "UNKNOWN_CONDITIONAL"}[overall],
        "accessTuple": tuple_out,
        "allowPolicyExplanation": {"allowAccessState": f"ALLOW_ACCESS_STATE_{allow}",
                                   "explainedPolicies": explained,
                                   "relevance": _h(deny != "DENIED")},
        "denyPolicyExplanation": {"denyAccessState": f"DENY_ACCESS_STATE_{deny}",
                                  "explainedResources": resources,
                                  "relevance": _h(deny != "NOT_DENIED" or allow != "NOT_GRANTED"),
                                  "permissionDeniable": True},
    }
