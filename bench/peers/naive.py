"""A deliberately simple pure-Python evaluator: the floor any clever engine must beat.

For every check it walks the resource's ancestry (resource → parent → … → organization),
first testing every deny rule attached on the way, then every allow binding: does the role
hold the permission, does a member match (groups by a depth-first walk of the group
definitions, every time), does the condition hold (CEL, evaluated by cel-python, an
implementation independent of keycard's). No index, no cache. The workload generator also
uses it as the reference that labels each query's class and expected decision.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bench.model import Binding, Cond, DenyRule, Model, build_model, norm_member

NAME = "naive"
DESCRIPTION = "pure-Python: walk the ancestry, test each deny rule and binding (CEL via cel-python)"
UNSUPPORTED: frozenset[str] = frozenset()


class _Cel:
    """CEL through cel-python, compiled once per expression."""

    def __init__(self, when: datetime) -> None:
        import celpy
        from celpy import celtypes

        self._celpy = celpy
        self._types = celtypes
        self._env = celpy.Environment()
        self._programs: dict[str, Any] = {}
        self._time = celtypes.TimestampType(when)

    def evaluate(self, expression: str, relname: str, atype: str) -> bool:
        prg = self._programs.get(expression)
        if prg is None:
            prg = self._programs[expression] = self._env.program(self._env.compile(expression))
        t = self._types
        act = {
            "request": t.MapType({t.StringType("time"): self._time}),
            "resource": t.MapType({
                t.StringType("name"): t.StringType(relname),
                t.StringType("type"): t.StringType(atype),
                t.StringType("service"): t.StringType(atype.split("/", 1)[0]),
            }),
        }
        try:
            out = prg.evaluate(act)
        except Exception:  # an erroring condition grants (or denies) nothing
            return False
        return out is True or (isinstance(out, t.BoolType) and bool(out))


class Naive:
    def __init__(self, model: Model) -> None:
        self.m = model
        assert model.time is not None
        self.cel = _Cel(model.time)

    # --------------------------------------------------------------------- members
    def in_group(self, principal: str, group: str, seen: set[str] | None = None) -> bool:
        seen = seen if seen is not None else set()
        if group in seen:
            return False
        seen.add(group)
        for mem in self.m.groups.get(group, ()):
            if mem == principal:
                return True
            if mem.startswith("group:") and self.in_group(principal, mem, seen):
                return True
        return False

    def matches(self, member: str, principal: str) -> bool:
        if member == principal or member in ("allUsers", "allAuthenticatedUsers"):
            return True
        if member.startswith("domain:"):
            return principal.startswith("user:") and principal.rsplit("@", 1)[1] == member[7:]
        if member.startswith("group:"):
            return self.in_group(principal, member)
        return False

    def cond_true(self, cond: Cond | None, resource: str) -> bool:
        if cond is None:
            return True
        return self.cel.evaluate(cond.expression, self.m.relname[resource], self.m.atype.get(resource, ""))

    # --------------------------------------------------------------------- decision
    def deny_rule_matches(self, rule: DenyRule, principal: str, permission: str, resource: str,
                          *, ignore_exceptions: bool = False) -> bool:
        if permission not in (rule.raw_denied if ignore_exceptions else rule.permissions):
            return False
        if not any(self.matches(p, principal) for p in rule.principals):
            return False
        if not ignore_exceptions and any(self.matches(p, principal) for p in rule.exceptions):
            return False
        return ignore_exceptions or self.cond_true(rule.cond, resource)

    def denied(self, principal: str, permission: str, resource: str) -> bool:
        for node in self.m.chain(resource):
            for rule in self.m.deny.get(node, ()):
                if self.deny_rule_matches(rule, principal, permission, resource):
                    return True
        return False

    def binding_grants(self, b: Binding, principal: str, permission: str, resource: str, *,
                       conds_true: bool = False, skip_conditional: bool = False,
                       enable_disabled: bool = False) -> bool:
        perms = self.m.roles.get(b.role)
        if perms is None:
            if not (enable_disabled and b.role in self.m.dead_roles):
                return False
            perms = self._dead_perms(b.role)
        if permission not in perms:
            return False
        if not any(self.matches(x, principal) for x in b.members):
            return False
        if b.cond is not None:
            if skip_conditional:
                return False
            if not conds_true and not self.cond_true(b.cond, resource):
                return False
        return True

    def _dead_perms(self, role: str) -> frozenset[str]:
        return self.m.dead_role_perms.get(role, frozenset())

    def allowed_by_bindings(self, principal: str, permission: str, resource: str, **kw: bool) -> bool:
        for node in self.m.chain(resource):
            for b in self.m.bindings.get(node, ()):
                if self.binding_grants(b, principal, permission, resource, **kw):
                    return True
        return False

    def check(self, principal: str, permission: str, resource: str) -> bool:
        principal = norm_member(principal)
        if self.denied(principal, permission, resource):
            return False
        return self.allowed_by_bindings(principal, permission, resource)

    # --------------------------------------------------------------------- for labelling
    def features(self, principal: str, permission: str, resource: str) -> set[str]:
        """Which hard-to-express parts of IAM the decision of this query touches."""
        principal = norm_member(principal)
        out: set[str] = set()
        for node in self.m.chain(resource):
            for rule in self.m.deny.get(node, ()):
                if self.deny_rule_matches(rule, principal, permission, resource, ignore_exceptions=True):
                    if rule.cond is not None:
                        out.add("deny_condition")
                    if rule.exceptions or rule.raw_excepted:
                        out.add("deny_exception")
            for b in self.m.bindings.get(node, ()):
                if b.cond is not None and self.binding_grants(b, principal, permission, resource, conds_true=True):
                    out.add("condition")
        return out


def build(wl: Any) -> Naive:
    return Naive(build_model(wl))


def check(engine: Naive, principal: str, permission: str, resource: str) -> bool:
    return engine.check(principal, permission, resource)


def write(engine: Naive, resource: str, policy: dict[str, Any]) -> None:
    from bench.model import parse_condition

    engine.m.bindings[resource] = [
        Binding(b["role"], tuple(norm_member(x) for x in b["members"]),
                parse_condition(b["condition"]["expression"]) if b.get("condition") else None)
        for b in policy.get("bindings", [])
    ]
