"""Organization Policy (v2) for the IAM constraints keycard enforces, pure.

``parse_policy`` validates an Org Policy v2 ``Policy`` JSON; ``effective_policy`` folds the
policies on a resource's ancestry into the effective policy, as Google's hierarchy evaluation does:

* a policy with ``spec.reset`` restores the constraint's default and ignores every ancestor;
* no policy on a resource: the parent's effective policy applies (the root: the default);
* boolean constraints: the nearest policy decides (its rule without a condition);
* list constraints: ``inheritFromParent: false`` makes the policy the new root of evaluation;
  ``inheritFromParent: true`` merges its allowed and denied values with the parent's effective
  policy — denied values always win; ``allowAll``/``denyAll`` replace what they are merged with.
  A policy with only denied values allows every other value.

Rules with a ``condition`` (Google: tag conditions, ``resource.matchTag(…)``) are validated and
kept, but keycard's resources carry no tags, so conditional rules never apply; ``Effective``
lists the ones it skipped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from keycard import names
from keycard.errors import InvalidArgument

__all__ = [
    "CONSTRAINTS",
    "ConstraintInfo",
    "Effective",
    "OrgPolicy",
    "PolicyRule",
    "constraint_json",
    "constraints",
    "effective_policy",
    "key_expiry_hours",
    "member_domain_allowed",
    "parse_policy",
]


# ====================================================================================== constraints

@dataclass(frozen=True, slots=True)
class ConstraintInfo:
    name: str                                      # e.g. "iam.allowedPolicyMemberDomains"
    display_name: str
    description: str
    type: Literal["list", "boolean"]
    default: Literal["ALLOW", "DENY"] = "ALLOW"    # constraintDefault: ALLOW = not enforced / all values
    values: tuple[str, ...] | None = None          # the only values a list constraint takes, when fixed


KEY_EXPIRY_VALUES = ("1h", "8h", "24h", "168h", "336h", "720h", "1440h", "2160h", "4320h", "8760h")

CONSTRAINTS: Mapping[str, ConstraintInfo] = {c.name: c for c in (
    ConstraintInfo(
        "iam.allowedPolicyMemberDomains", "Domain restricted sharing",
        "Defines the set of principals that can be added to IAM policies: allowed values are Cloud Identity "
        "customer IDs (keycard also accepts domains such as example.com). allUsers and allAuthenticatedUsers "
        "cannot be granted roles while the constraint restricts domains.",
        "list"),
    ConstraintInfo(
        "iam.disableServiceAccountKeyCreation", "Disable service account key creation",
        "When enforced, user-managed keys cannot be created for service accounts.", "boolean"),
    ConstraintInfo(
        "iam.disableServiceAccountKeyUpload", "Disable Service Account Key Upload",
        "When enforced, public keys cannot be uploaded to service accounts.", "boolean"),
    ConstraintInfo(
        "iam.automaticIamGrantsForDefaultServiceAccounts",
        "Disable Automatic IAM Grants for Default Service Accounts",
        "When enforced, default service accounts created in projects are not granted the Editor role "
        "automatically. Not enforced by default: automatic grants happen.", "boolean"),
    ConstraintInfo(
        "iam.serviceAccountKeyExpiryHours", "Service account key expiry duration in hours",
        "Sets the lifetime of newly created user-managed service account keys. Allowed values: "
        + ", ".join(KEY_EXPIRY_VALUES) + "; the shortest allowed value applies.",
        "list", values=KEY_EXPIRY_VALUES),
    ConstraintInfo(
        "iam.allowServiceAccountCredentialLifetimeExtension",
        "Allow extending lifetime of OAuth 2.0 access tokens to up to 12 hours",
        "Lists the service accounts (by email) whose OAuth 2.0 access tokens from generateAccessToken may live "
        "up to 12 hours instead of 1 hour. By default no account may.", "list", default="DENY"),
)}


def constraint_json(info: ConstraintInfo, parent: str | None = None) -> dict[str, Any]:
    """Google's ``Constraint`` JSON (``GET /v2/{parent}/constraints``)."""
    out: dict[str, Any] = {
        "name": f"{parent}/constraints/{info.name}" if parent else f"constraints/{info.name}",
        "displayName": info.display_name,
        "description": info.description,
        "constraintDefault": info.default,
    }
    if info.type == "list":
        out["listConstraint"] = {"supportsIn": False, "supportsUnder": False}
    else:
        out["booleanConstraint"] = {}
    out["supportsDryRun"] = True
    return out


def constraints(parent: str | None = None) -> list[dict[str, Any]]:
    """Every constraint keycard supports, as Google's Constraint JSON, sorted by name."""
    return [constraint_json(CONSTRAINTS[n], parent) for n in sorted(CONSTRAINTS)]


def _constraint(name: object, fld: str) -> ConstraintInfo:
    if not isinstance(name, str):
        raise InvalidArgument(f"Invalid {fld} {name!r}: expected a constraint name such as "
                              "'iam.disableServiceAccountKeyCreation'.", field=fld)
    short = name.removeprefix("constraints/")
    info = CONSTRAINTS.get(short)
    if info is None:
        raise InvalidArgument(f"Invalid {fld}: constraint {short!r} is not supported; keycard supports "
                              f"{', '.join(sorted(CONSTRAINTS))}.", field=fld, reason="UNKNOWN_CONSTRAINT")
    return info


# ========================================================================================= policies

@dataclass(frozen=True, slots=True)
class RuleCondition:
    expression: str
    title: str = ""
    description: str = ""
    location: str = ""

    def to_json(self) -> dict[str, str]:
        out = {"expression": self.expression}
        for k, v in (("title", self.title), ("description", self.description), ("location", self.location)):
            if v:
                out[k] = v
        return out


@dataclass(frozen=True, slots=True)
class PolicyRule:
    enforce: bool | None = None                    # boolean constraints
    allow_all: bool = False                        # list constraints …
    deny_all: bool = False
    allowed_values: tuple[str, ...] = ()
    denied_values: tuple[str, ...] = ()
    condition: RuleCondition | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.enforce is not None:
            out["enforce"] = self.enforce
        elif self.allow_all:
            out["allowAll"] = True
        elif self.deny_all:
            out["denyAll"] = True
        else:
            values: dict[str, list[str]] = {}
            if self.allowed_values:
                values["allowedValues"] = list(self.allowed_values)
            if self.denied_values:
                values["deniedValues"] = list(self.denied_values)
            out["values"] = values
        if self.condition is not None:
            out["condition"] = self.condition.to_json()
        return out


@dataclass(frozen=True, slots=True)
class PolicySpec:
    rules: tuple[PolicyRule, ...] = ()
    inherit_from_parent: bool = False
    reset: bool = False
    etag: str = ""
    update_time: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.etag:
            out["etag"] = self.etag
        if self.update_time:
            out["updateTime"] = self.update_time
        if self.rules:
            out["rules"] = [r.to_json() for r in self.rules]
        if self.inherit_from_parent:
            out["inheritFromParent"] = True
        if self.reset:
            out["reset"] = True
        return out


@dataclass(frozen=True, slots=True)
class OrgPolicy:
    """A validated Org Policy v2 Policy: one constraint on one organization, folder or project."""

    name: str                                      # "projects/P/policies/iam.x"
    parent: str                                    # "projects/P"
    constraint: str                                # "iam.x"
    spec: PolicySpec = field(default_factory=PolicySpec)
    dry_run_spec: PolicySpec | None = None
    etag: str = ""

    @property
    def rules(self) -> tuple[PolicyRule, ...]:
        return self.spec.rules

    @property
    def inherit_from_parent(self) -> bool:
        return self.spec.inherit_from_parent

    @property
    def reset(self) -> bool:
        return self.spec.reset

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "spec": self.spec.to_json()}
        if self.dry_run_spec is not None:
            out["dryRunSpec"] = self.dry_run_spec.to_json()
        if self.etag:
            out["etag"] = self.etag
        return out


_POLICY_NAME_RE = re.compile(r"^((?:organizations|folders|projects)/[^/]+)/policies/([^/]+)$")
_CUSTOMER_ID_RE = re.compile(r"^C[0-9A-Za-z]{4,20}$")
_DOMAIN_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+$")
_SPEC_KEYS = frozenset({"etag", "updateTime", "rules", "inheritFromParent", "reset"})
_RULE_KEYS = frozenset({"values", "allowAll", "denyAll", "enforce", "condition", "parameters"})


def _bad(fld: str, what: str, value: object = None, *, show: bool = True) -> InvalidArgument:
    shown = ""
    if show and value is not None:
        text = repr(value)
        shown = " " + (text if len(text) <= 120 else text[:117] + "...'")
    return InvalidArgument(f"Invalid {fld}{shown}: {what}.", field=fld)


def _bool(obj: Mapping[str, Any], key: str, fld: str) -> bool:
    value = obj.get(key, False)
    if not isinstance(value, bool):
        raise _bad(f"{fld}.{key}", "expected true or false", value)
    return value


def _opt_str(obj: Mapping[str, Any], key: str, fld: str) -> str:
    value = obj.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _bad(f"{fld}.{key}", "expected a string", value)
    return value


def _value(info: ConstraintInfo, raw: object, fld: str) -> str:
    if not isinstance(raw, str) or not raw:
        raise _bad(fld, "expected a non-empty string", raw)
    value = raw.removeprefix("is:")
    if value.startswith(("under:", "in:")):
        raise _bad(fld, f"constraint {info.name} supports neither 'under:' nor 'in:' values", raw)
    if info.values is not None:
        if value not in info.values:
            raise _bad(fld, f"constraint {info.name} takes one of {', '.join(info.values)}", raw)
        return value
    if info.name == "iam.allowedPolicyMemberDomains":
        if _CUSTOMER_ID_RE.fullmatch(value):
            return value
        if _DOMAIN_RE.fullmatch(value.lower()):
            return value.lower()
        raise _bad(fld, "expected a Cloud Identity customer ID such as 'C0abc123' or a domain such as "
                        "'example.com'", raw)
    return value


def _values(info: ConstraintInfo, obj: Mapping[str, Any], key: str, fld: str) -> tuple[str, ...]:
    raw = obj.get(key, [])
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _bad(f"{fld}.{key}", "expected a list of strings", raw)
    return tuple(dict.fromkeys(_value(info, v, f"{fld}.{key}[{i}]") for i, v in enumerate(raw)))


def _condition(raw: object, fld: str) -> RuleCondition:
    if not isinstance(raw, Mapping):
        raise _bad(fld, "expected an object with an expression", raw)
    expr = raw.get("expression")
    if not isinstance(expr, str) or not expr.strip():
        raise _bad(f"{fld}.expression", "expected a non-empty CEL expression such as "
                                        "\"resource.matchTag('123/env', 'prod')\"", expr)
    return RuleCondition(expr, _opt_str(raw, "title", fld), _opt_str(raw, "description", fld),
                         _opt_str(raw, "location", fld))


def _rule(info: ConstraintInfo, raw: object, fld: str) -> PolicyRule:
    if not isinstance(raw, Mapping):
        raise _bad(fld, "expected an object", raw)
    for key in raw:
        if key not in _RULE_KEYS:
            raise _bad(f"{fld}.{key}", "unknown field; a rule has values, allowAll, denyAll, enforce and condition",
                       show=False)
    if raw.get("parameters") not in (None, {}):
        raise _bad(f"{fld}.parameters", f"constraint {info.name} takes no parameters", show=False)
    if info.type == "boolean":
        for key in ("values", "allowAll", "denyAll"):
            if raw.get(key) is not None:
                raise _bad(f"{fld}.{key}", f"{info.name} is a boolean constraint: use enforce", show=False)
        kinds = ["enforce"] if raw.get("enforce") is not None else []
    else:
        if raw.get("enforce") is not None:
            raise _bad(f"{fld}.enforce", f"{info.name} is a list constraint: use values, allowAll or denyAll",
                       show=False)
        kinds = [k for k in ("values", "allowAll", "denyAll") if raw.get(k) not in (None, False)]
    cond = _condition(raw["condition"], f"{fld}.condition") if raw.get("condition") is not None else None
    if len(kinds) != 1:
        want = "enforce" if info.type == "boolean" else "exactly one of values, allowAll or denyAll"
        raise _bad(fld, f"a rule for {info.type} constraint {info.name} sets {want}", show=False)
    kind = kinds[0]
    if kind == "enforce":
        return PolicyRule(enforce=_bool(raw, "enforce", fld), condition=cond)
    if kind in ("allowAll", "denyAll"):
        if raw.get(kind) is not True:
            raise _bad(f"{fld}.{kind}", "expected true", raw.get(kind))
        if kind == "denyAll" and info.values is not None:
            raise _bad(f"{fld}.denyAll", f"constraint {info.name} takes only allowed values", show=False)
        return PolicyRule(allow_all=kind == "allowAll", deny_all=kind == "denyAll", condition=cond)
    values = raw["values"]
    if not isinstance(values, Mapping):
        raise _bad(f"{fld}.values", "expected an object with allowedValues and/or deniedValues", values)
    for key in values:
        if key not in ("allowedValues", "deniedValues"):
            raise _bad(f"{fld}.values.{key}", "unknown field; expected allowedValues or deniedValues", show=False)
    allowed = _values(info, values, "allowedValues", f"{fld}.values")
    denied = _values(info, values, "deniedValues", f"{fld}.values")
    if not allowed and not denied:
        raise _bad(f"{fld}.values", "set allowedValues or deniedValues", show=False)
    if denied and info.values is not None:
        raise _bad(f"{fld}.values.deniedValues", f"constraint {info.name} takes only allowed values", show=False)
    return PolicyRule(allowed_values=allowed, denied_values=denied, condition=cond)


def _spec(info: ConstraintInfo, raw: object, fld: str) -> PolicySpec:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise _bad(fld, "expected an object", raw)
    for key in raw:
        if key not in _SPEC_KEYS:
            raise _bad(f"{fld}.{key}", "unknown field; a spec has rules, inheritFromParent and reset",
                       show=False)
    rules_raw = raw.get("rules", [])
    if rules_raw is None:
        rules_raw = []
    if not isinstance(rules_raw, list):
        raise _bad(f"{fld}.rules", "expected a list of rules", rules_raw)
    rules = tuple(_rule(info, r, f"{fld}.rules[{i}]") for i, r in enumerate(rules_raw))
    inherit = _bool(raw, "inheritFromParent", fld)
    reset = _bool(raw, "reset", fld)
    if reset and rules:
        raise _bad(f"{fld}.reset", "a policy that resets has no rules", show=False)
    if reset and inherit:
        raise _bad(f"{fld}.inheritFromParent", "a policy that resets cannot inherit from its parent", show=False)
    if inherit and info.type == "boolean":
        raise _bad(f"{fld}.inheritFromParent", f"{info.name} is a boolean constraint; inheritFromParent is "
                                                "only for list constraints", show=False)
    if info.type == "boolean" and not reset:
        plain = [i for i, r in enumerate(rules) if r.condition is None]
        if len(plain) != 1:
            raise _bad(f"{fld}.rules", "a boolean constraint's policy needs exactly one rule without a condition",
                       show=False)
        base = rules[plain[0]].enforce
        for i, r in enumerate(rules):
            if r.condition is not None and r.enforce == base:
                raise _bad(f"{fld}.rules[{i}].enforce", "a conditional rule must set enforce to the opposite of "
                                                        "the rule without a condition", show=False)
    if info.type == "list":
        plain_kinds = {("allowAll" if r.allow_all else "denyAll") for r in rules
                       if r.condition is None and (r.allow_all or r.deny_all)}
        if len(plain_kinds) > 1:
            raise _bad(f"{fld}.rules", "allowAll and denyAll cannot both apply", show=False)
    return PolicySpec(rules, inherit, reset, _opt_str(raw, "etag", fld), _opt_str(raw, "updateTime", fld))


def _parent(text: str, fld: str) -> str:
    rn = names.parse_resource(text, fld)
    if not rn.is_container:
        raise _bad(fld, "org policies are set on an organization, folder or project", text)
    return rn.relative


def parse_policy(value: object, field: str = "policy", *, parent: str | None = None,
                 constraint: str | None = None) -> OrgPolicy:
    """Validate an Org Policy v2 ``Policy`` JSON.

    ``name`` is ``{organizations/N|folders/N|projects/P}/policies/CONSTRAINT``; when the request path
    already says it, ``parent``/``constraint`` fill in a missing name (and must agree with a given one).
    """
    if not isinstance(value, Mapping):
        raise _bad(field, "expected an Org Policy object with name and spec", value)
    for key in value:
        if key not in ("name", "spec", "dryRunSpec", "etag", "alternate"):
            raise _bad(f"{field}.{key}", "unknown field; a policy has name, spec, dryRunSpec and etag", show=False)
    if value.get("alternate") is not None:
        raise _bad(f"{field}.alternate", "deprecated and not supported; use dryRunSpec", show=False)
    name = value.get("name")
    if name in (None, "") and parent is not None and constraint is not None:
        name = f"{parent}/policies/{constraint.removeprefix('constraints/')}"
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"Invalid {field}.name: required, e.g. 'projects/my-project/policies/"
                              "iam.disableServiceAccountKeyCreation'.", field=f"{field}.name")
    m = _POLICY_NAME_RE.fullmatch(name)
    if m is None:
        raise _bad(f"{field}.name", "expected '{organizations/N|folders/N|projects/P}/policies/CONSTRAINT'", name)
    node = _parent(m.group(1), f"{field}.name")
    info = _constraint(m.group(2), f"{field}.name")
    if parent is not None and _parent(parent, "parent") != node:
        raise _bad(f"{field}.name", f"the policy belongs to {node}, not {parent}", name)
    if constraint is not None and constraint.removeprefix("constraints/") != info.name:
        raise _bad(f"{field}.name", f"the policy configures {info.name}, not {constraint}", name)
    if value.get("spec") is None and value.get("dryRunSpec") is None:
        raise InvalidArgument(f"Invalid {field}.spec: required.", field=f"{field}.spec")
    spec = _spec(info, value.get("spec"), f"{field}.spec") if value.get("spec") is not None else PolicySpec()
    dry = _spec(info, value["dryRunSpec"], f"{field}.dryRunSpec") if value.get("dryRunSpec") is not None else None
    return OrgPolicy(f"{node}/policies/{info.name}", node, info.name, spec, dry,
                     _opt_str(value, "etag", field))


# ======================================================================================== evaluation

@dataclass(frozen=True, slots=True)
class Effective:
    """The effective policy of one constraint on one resource."""

    constraint: str
    type: Literal["list", "boolean"]
    enforced: bool = False                          # boolean constraints
    allow_all: bool = False                         # list: every value not in denied_values is allowed
    deny_all: bool = False                          # list: no value is allowed
    allowed_values: frozenset[str] = frozenset()    # list, when neither allow_all nor deny_all
    denied_values: frozenset[str] = frozenset()
    source: str | None = None                       # resource whose policy decided (None: the default)
    sources: tuple[str, ...] = ()                   # every resource whose policy contributed, nearest first
    is_default: bool = True
    skipped_conditional_rules: tuple[str, ...] = () # "RESOURCE rules[i]" of conditional rules not applied

    def allows(self, value: str) -> bool:
        """List constraints: is ``value`` allowed?"""
        if value in self.denied_values or self.deny_all:
            return False
        return self.allow_all or value in self.allowed_values

    @property
    def restricts(self) -> bool:
        """List constraints: does the policy restrict values at all?"""
        return not (self.allow_all and not self.denied_values)

    def to_json(self, parent: str) -> dict[str, Any]:
        """The ``getEffectivePolicy`` answer for ``parent`` (``projects/P``, ``folders/N`` …)."""
        rule: dict[str, Any]
        if self.type == "boolean":
            rule = {"enforce": self.enforced}
        elif self.deny_all:
            rule = {"denyAll": True}
        elif self.allow_all and not self.denied_values:
            rule = {"allowAll": True}
        else:
            values: dict[str, list[str]] = {}
            if not self.allow_all:
                values["allowedValues"] = sorted(self.allowed_values)
            if self.denied_values:
                values["deniedValues"] = sorted(self.denied_values)
            rule = {"values": values}
        return {"name": f"{parent}/policies/{self.constraint}", "spec": {"rules": [rule]}}


@dataclass(frozen=True, slots=True)
class _List:
    allow_all: bool
    deny_all: bool
    allowed: frozenset[str]
    denied: frozenset[str]


def _default(info: ConstraintInfo) -> _List:
    return _List(info.default == "ALLOW", info.default == "DENY", frozenset(), frozenset())


def _own(rules: Sequence[PolicyRule]) -> _List | None:
    """A list policy's own rules (unconditional ones) as written; None when it has none."""
    if not rules:
        return None
    return _List(any(r.allow_all for r in rules), any(r.deny_all for r in rules),
                 frozenset(v for r in rules for v in r.allowed_values),
                 frozenset(v for r in rules for v in r.denied_values))


def _root(own: _List) -> _List:
    """A policy that does not inherit: its rules alone. Only denied values: every other value is allowed."""
    if own.deny_all:
        return _List(False, True, frozenset(), own.denied)
    if own.allow_all or not own.allowed:
        return _List(True, False, frozenset(), own.denied)
    return _List(False, False, own.allowed, own.denied)


def _merge(parent: _List, own: _List) -> _List:
    """inheritFromParent: union of allowed and of denied values; denied values win."""
    denied = parent.denied | own.denied
    if own.deny_all:
        return _List(False, True, frozenset(), denied)
    if own.allow_all or parent.allow_all:
        return _List(True, False, frozenset(), denied)
    allowed = own.allowed if parent.deny_all else parent.allowed | own.allowed
    if not allowed:
        return _List(False, True, frozenset(), denied)
    return _List(False, False, allowed, denied)


def effective_policy(constraint: str, chain: Sequence[tuple[str, OrgPolicy | None]]) -> Effective:
    """The effective policy of ``constraint`` on ``chain[0][0]``.

    ``chain``: the resource and its ancestors, nearest first, each with its policy for this
    constraint (or None).
    """
    info = _constraint(constraint, "constraint")
    skipped: list[str] = []
    for resource, pol in chain:
        if pol is not None and pol.constraint != info.name:
            raise InvalidArgument(f"Invalid chain: the policy on {resource} configures {pol.constraint}, "
                                  f"not {info.name}.", field="chain")
        if pol is not None:
            skipped.extend(f"{resource} rules[{i}]" for i, r in enumerate(pol.rules) if r.condition is not None)

    if info.type == "boolean":
        for resource, pol in chain:
            if pol is None:
                continue
            if pol.reset:
                return Effective(info.name, "boolean", enforced=info.default == "DENY", source=resource,
                                 sources=(resource,), is_default=True, skipped_conditional_rules=tuple(skipped))
            plain = [r for r in pol.rules if r.condition is None and r.enforce is not None]
            if plain:
                return Effective(info.name, "boolean", enforced=bool(plain[0].enforce), source=resource,
                                 sources=(resource,), is_default=False,
                                 skipped_conditional_rules=tuple(skipped))
        return Effective(info.name, "boolean", enforced=info.default == "DENY",
                         skipped_conditional_rules=tuple(skipped))

    # list constraints: evaluate from the root down
    state: _List | None = None          # None: no policy in force above (the constraint default applies)
    contributors: list[str] = []
    for resource, pol in reversed(chain):
        if pol is None:
            continue
        if pol.reset:
            state, contributors = None, [resource]
            continue
        own = _own([r for r in pol.rules if r.condition is None])
        if pol.inherit_from_parent:
            if own is None:
                continue                # inherits everything, adds nothing
            state = _root(own) if state is None else _merge(state, own)
            contributors.append(resource)
        else:
            state, contributors = (_root(own) if own is not None else None), [resource]
    result = state or _default(info)
    source = contributors[-1] if contributors else None
    return Effective(info.name, "list", allow_all=result.allow_all, deny_all=result.deny_all,
                     allowed_values=result.allowed, denied_values=result.denied, source=source,
                     sources=tuple(reversed(contributors)), is_default=state is None,
                     skipped_conditional_rules=tuple(skipped))


# ========================================================================================== helpers

def member_domain_allowed(effective: Effective, member: str, *,
                          customer_ids_by_domain: Mapping[str, str] | None = None) -> bool:
    """Domain restricted sharing (``iam.allowedPolicyMemberDomains``): may ``member`` be granted a role?

    ``user:``/``group:``/``domain:`` members must be in an allowed domain or allowed customer ID
    (``customer_ids_by_domain`` maps a domain to its Cloud Identity customer ID). ``serviceAccount:``
    members are allowed unless their email's domain (or its customer ID) is explicitly denied.
    ``allUsers``/``allAuthenticatedUsers`` are rejected whenever the constraint restricts domains.
    Other principals (workload/workforce identities, convenience values) are not Google accounts and
    are allowed.
    """
    if effective.type != "list":
        raise InvalidArgument(f"Invalid effective policy: {effective.constraint} is not a list constraint.",
                              field="effective")
    if not effective.restricts:
        return True
    ids = {k.lower(): v for k, v in (customer_ids_by_domain or {}).items()}
    if member.startswith("deleted:"):
        member = member[len("deleted:"):].split("?uid=", 1)[0]
    if member in ("allUsers", "allAuthenticatedUsers"):
        return False
    if member.startswith("principalSet://goog/cloudIdentityCustomerId/"):
        return effective.allows(member.rsplit("/", 1)[1])
    kind, sep, rest = member.partition(":")
    if not sep or kind not in ("user", "group", "domain", "serviceAccount"):
        return True
    domain = (rest.rsplit("@", 1)[1] if kind != "domain" else rest).lower()
    candidates = [domain] + ([ids[domain]] if domain in ids else [])
    if kind == "serviceAccount":
        return not any(c in effective.denied_values for c in candidates)
    return any(effective.allows(c) for c in candidates) and not any(c in effective.denied_values
                                                                   for c in candidates)


def key_expiry_hours(effective: Effective) -> int | None:
    """``iam.serviceAccountKeyExpiryHours``: the key lifetime in hours, None when keys do not expire."""
    if effective.constraint != "iam.serviceAccountKeyExpiryHours":
        raise InvalidArgument(f"Invalid effective policy: {effective.constraint} is not "
                              "iam.serviceAccountKeyExpiryHours.", field="effective")
    if effective.allow_all or effective.deny_all:
        return None
    hours = [int(v[:-1]) for v in effective.allowed_values if v in KEY_EXPIRY_VALUES]
    return min(hours) if hours else None
