"""Frozen domain objects of the engine and their parsers from Google's JSON.

Allow policies are google.iam.v1.Policy (version 1 or 3, bindings, members,
etag, auditConfigs kept verbatim); deny policies are google.iam.v2.Policy with
``denyRule`` rules; roles are IAM v1 Role JSON as ``gcloud iam roles describe``
prints it. Each parser validates everything and raises only InvalidArgument,
naming the field (``bindings[2].members[0]``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from keycard import names
from keycard.engine.conditions import CompiledCondition, compile_condition
from keycard.errors import InvalidArgument

__all__ = [
    "AllowPolicy",
    "Binding",
    "Condition",
    "DenyPolicy",
    "DenyRule",
    "Role",
    "parse_allow_policy",
    "parse_deny_policy",
    "parse_role",
]

ROLE_STAGES = ("ALPHA", "BETA", "GA", "DEPRECATED", "DISABLED", "EAP")


@dataclass(frozen=True, slots=True)
class Condition:
    expression: str
    title: str = ""
    description: str = ""
    compiled: CompiledCondition | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, str]:
        out = {"expression": self.expression}
        if self.title:
            out["title"] = self.title
        if self.description:
            out["description"] = self.description
        return out


@dataclass(frozen=True, slots=True)
class Binding:
    role: str
    members: tuple[str, ...]
    condition: Condition | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "members": list(self.members)}
        if self.condition is not None:
            out["condition"] = self.condition.to_json()
        return out


@dataclass(frozen=True, slots=True)
class AllowPolicy:
    version: int = 1
    bindings: tuple[Binding, ...] = ()
    etag: str = ""
    audit_configs: tuple[Mapping[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version}
        if self.bindings:
            out["bindings"] = [b.to_json() for b in self.bindings]
        if self.audit_configs:
            out["auditConfigs"] = [dict(a) for a in self.audit_configs]
        if self.etag:
            out["etag"] = self.etag
        return out


@dataclass(frozen=True, slots=True)
class DenyRule:
    denied_principals: frozenset[str]
    exception_principals: frozenset[str]
    denied_permissions: frozenset[tuple[str, str, str]]     # (v1 prefix, resource|*, verb|*)
    exception_permissions: frozenset[tuple[str, str, str]]
    condition: Condition | None = None
    description: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class DenyPolicy:
    name: str
    rules: tuple[DenyRule, ...]
    display_name: str = ""
    etag: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    permissions: frozenset[str]
    title: str = ""
    description: str = ""
    stage: str = "GA"
    deleted: bool = False
    etag: str = ""

    @property
    def grants(self) -> bool:
        """DISABLED and deleted roles grant nothing."""
        return not self.deleted and self.stage != "DISABLED"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "title": self.title, "description": self.description,
                               "stage": self.stage, "includedPermissions": sorted(self.permissions)}
        if self.deleted:
            out["deleted"] = True
        if self.etag:
            out["etag"] = self.etag
        return out


# ------------------------------------------------------------------------------------------- parsing

def _get(obj: Mapping[str, Any], camel: str, default: Any = None) -> Any:
    """Read a field in camelCase or snake_case (Cloud Asset exports use either)."""
    if camel in obj:
        return obj[camel]
    snake = "".join("_" + c.lower() if c.isupper() else c for c in camel)
    return obj.get(snake, default)


def _mapping(value: object, fld: str) -> Mapping[str, Any]:
    if type(value) is dict:
        return value
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"Invalid {fld}: expected a JSON object.", field=fld)
    return value


def _list(value: object, fld: str) -> Sequence[Any]:
    if type(value) is list:
        return value
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise InvalidArgument(f"Invalid {fld}: expected a JSON array.", field=fld)
    return value


def _str(value: object, fld: str, *, default: str = "") -> str:
    if type(value) is str:
        return value
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidArgument(f"Invalid {fld}: expected a string.", field=fld)
    return value


def parse_condition(value: object, fld: str) -> Condition:
    obj = _mapping(value, fld)
    expr = _str(obj.get("expression"), f"{fld}.expression")
    if not expr.strip():
        raise InvalidArgument(f"Invalid {fld}.expression: a condition needs a CEL expression.",
                              field=f"{fld}.expression")
    compiled = compile_condition(expr, field=f"{fld}.expression")
    return Condition(expr, _str(obj.get("title"), f"{fld}.title"),
                     _str(obj.get("description"), f"{fld}.description"), compiled)


def parse_allow_policy(value: object, fld: str = "policy", *, lenient_version: bool = False) -> AllowPolicy:
    """Parse a google.iam.v1.Policy. Conditions require version 3.

    ``lenient_version`` reads a policy without a version field as version 3 when it
    carries conditions (Cloud Asset Inventory exports may omit the field).
    """
    obj = _mapping(value, fld)
    version_raw = obj.get("version", 0)
    if isinstance(version_raw, str) and version_raw.isascii() and version_raw.isdigit():
        version_raw = int(version_raw)
    if not isinstance(version_raw, int) or isinstance(version_raw, bool) or version_raw not in (0, 1, 3):
        raise InvalidArgument(f"Invalid {fld}.version {version_raw!r}: policy versions are 1 or 3.",
                              field=f"{fld}.version")
    bindings: list[Binding] = []
    has_condition = False
    for i, b in enumerate(_list(_get(obj, "bindings"), f"{fld}.bindings")):
        bf = f"{fld}.bindings[{i}]"
        b = _mapping(b, bf)
        role = names.parse_role_name(b.get("role"), f"{bf}.role")
        members_raw = _list(b.get("members"), f"{bf}.members")
        if not members_raw:
            raise InvalidArgument(f"Invalid {bf}.members: a binding needs at least one member.",
                                  field=f"{bf}.members")
        cache = names.MEMBER_CACHE
        parsed: list[str] = []
        for j, m in enumerate(members_raw):
            k = cache.get(m) if type(m) is str else None
            parsed.append(k if k is not None else names.parse_member(m, f"{bf}.members[{j}]"))
        members = tuple(dict.fromkeys(parsed)) if len(parsed) > 1 else tuple(parsed)
        cond = None
        if b.get("condition") is not None:
            cond = parse_condition(b["condition"], f"{bf}.condition")
            has_condition = True
        bindings.append(Binding(role, members, cond))
    version = version_raw or 1
    if has_condition and version != 3:
        if lenient_version and "version" not in obj:
            version = 3
        else:
            raise InvalidArgument(f"Invalid {fld}.version {version}: a policy with conditional role bindings "
                                  "must be version 3; set \"version\": 3.", field=f"{fld}.version")
    audit = tuple(_mapping(a, f"{fld}.auditConfigs[{i}]")
                  for i, a in enumerate(_list(_get(obj, "auditConfigs"), f"{fld}.auditConfigs")))
    return AllowPolicy(version, tuple(bindings), _str(obj.get("etag"), f"{fld}.etag"), audit)


def _deny_permissions(value: object, fld: str) -> frozenset[tuple[str, str, str]]:
    return frozenset(names.parse_deny_permission(p, f"{fld}[{i}]") for i, p in enumerate(_list(value, fld)))


def parse_deny_policy(value: object, fld: str = "policy", *, name: str = "") -> DenyPolicy:
    """Parse a google.iam.v2.Policy of kind DenyPolicy."""
    obj = _mapping(value, fld)
    rules: list[DenyRule] = []
    for i, r in enumerate(_list(obj.get("rules"), f"{fld}.rules")):
        rf = f"{fld}.rules[{i}]"
        r = _mapping(r, rf)
        dr = _mapping(_get(r, "denyRule"), f"{rf}.denyRule")
        df = f"{rf}.denyRule"
        denied = frozenset(names.parse_deny_principal(p, f"{df}.deniedPrincipals[{j}]")
                           for j, p in enumerate(_list(_get(dr, "deniedPrincipals"), f"{df}.deniedPrincipals")))
        if not denied:
            raise InvalidArgument(f"Invalid {df}.deniedPrincipals: a deny rule needs at least one principal.",
                                  field=f"{df}.deniedPrincipals")
        exc = frozenset(names.parse_deny_principal(p, f"{df}.exceptionPrincipals[{j}]")
                        for j, p in enumerate(_list(_get(dr, "exceptionPrincipals"),
                                                    f"{df}.exceptionPrincipals")))
        perms = _deny_permissions(_get(dr, "deniedPermissions"), f"{df}.deniedPermissions")
        if not perms:
            raise InvalidArgument(f"Invalid {df}.deniedPermissions: a deny rule needs at least one permission.",
                                  field=f"{df}.deniedPermissions")
        exc_perms = _deny_permissions(_get(dr, "exceptionPermissions"), f"{df}.exceptionPermissions")
        cond = None
        if _get(dr, "denialCondition") is not None:
            cond = parse_condition(_get(dr, "denialCondition"), f"{df}.denialCondition")
        rules.append(DenyRule(denied, exc, perms, exc_perms, cond, _str(r.get("description"), f"{rf}.description"),
                              dict(r)))
    policy_name = name or _str(obj.get("name"), f"{fld}.name")
    return DenyPolicy(policy_name, tuple(rules), _str(_get(obj, "displayName"), f"{fld}.displayName"),
                      _str(obj.get("etag"), f"{fld}.etag"), dict(obj))


def parse_role(value: object, fld: str = "role", *, known_permissions: frozenset[str] | None = None) -> Role:
    """Parse a role in IAM v1 JSON (gcloud's shape)."""
    obj = _mapping(value, fld)
    name = names.parse_role_name(obj.get("name"), f"{fld}.name")
    perms_raw = _list(_get(obj, "includedPermissions"), f"{fld}.includedPermissions")
    perms = frozenset(names.parse_permission(p, f"{fld}.includedPermissions[{i}]") for i, p in enumerate(perms_raw))
    if known_permissions is not None:
        unknown = sorted(perms - known_permissions)
        if unknown:
            raise InvalidArgument(f"Invalid {fld}.includedPermissions: unknown permission(s) "
                                  f"{', '.join(unknown[:5])}.", field=f"{fld}.includedPermissions")
    stage = _str(obj.get("stage"), f"{fld}.stage", default="GA") or "GA"
    if stage not in ROLE_STAGES:
        raise InvalidArgument(f"Invalid {fld}.stage {stage!r}: one of {', '.join(ROLE_STAGES)}.",
                              field=f"{fld}.stage")
    deleted = obj.get("deleted", False)
    if not isinstance(deleted, bool):
        raise InvalidArgument(f"Invalid {fld}.deleted: expected true or false.", field=f"{fld}.deleted")
    return Role(name, perms, _str(obj.get("title"), f"{fld}.title"),
                _str(obj.get("description"), f"{fld}.description"), stage, deleted,
                _str(obj.get("etag"), f"{fld}.etag"))
