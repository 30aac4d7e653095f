"""Rego on regorus (opa-eval): the policy ``bench/peers/iam.rego`` over data that holds the
hierarchy, the group graph, the roles, the allow bindings and the deny rules.

Per check the Rego walks the resource's ancestry (``graph.reachable`` over ``data.parents``),
expands the caller's groups (``graph.reachable`` over ``data.group_parents``) and adds its
domain, ``allAuthenticatedUsers`` and ``allUsers``, then looks for a matching deny rule and a
granting binding. Conditions are translated from CEL to data the Rego evaluates:
``request.time OP timestamp(T)`` → ``{"kind": "time", "op": OP, "ns": T in ns}`` compared with
``time.parse_rfc3339_ns(input.time)``; ``resource.name.startsWith(S)`` → ``startswith``.
Deny principals are normalized to v1 member strings, exception permissions subtracted.
It expresses every case in the workload. opa-eval has no call to update data, so a policy
write rebuilds the evaluator (measured as such).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import opa_eval

from bench.model import Binding, Cond, Model, build_model, norm_member, parse_condition

NAME = "rego"
DESCRIPTION = "opa-eval (regorus): iam.rego over data {parents, group_parents, roles, bindings, deny}"
UNSUPPORTED: frozenset[str] = frozenset()
POLICY = Path(__file__).with_name("iam.rego")


def _cond(c: Cond | None) -> dict[str, Any] | None:
    if c is None:
        return None
    if c.kind == "time":
        return {"kind": "time", "op": c.op, "ns": int(c.ts().timestamp()) * 1_000_000_000}
    return {"kind": "prefix", "value": c.value}


def _binding(b: Binding) -> dict[str, Any]:
    return {"role": b.role, "members": list(b.members), "cond": _cond(b.cond)}


class RegoEngine:
    def __init__(self, m: Model) -> None:
        self.m = m
        used = {b.role for bl in m.bindings.values() for b in bl}
        self.data: dict[str, Any] = {
            "parents": {n: [p] if p else [] for n, p in m.parent.items()},
            # graph.reachable needs every vertex as a key
            "group_parents": {**{g: [] for g in m.groups}, **{k: list(v) for k, v in m.group_parents.items()}},
            "roles": {r: dict.fromkeys(sorted(m.roles[r]), True) for r in used if r in m.roles},
            "bindings": {n: [_binding(b) for b in bl] for n, bl in m.bindings.items() if bl},
            "deny": {n: [{"principals": list(r.principals), "exceptions": list(r.exceptions),
                          "permissions": dict.fromkeys(sorted(r.permissions), True), "cond": _cond(r.cond)}
                         for r in rules] for n, rules in m.deny.items()},
        }
        self._load()
        assert m.time is not None
        self.time = m.time.strftime("%Y-%m-%dT%H:%M:%SZ")

    def _load(self) -> None:
        self.opa = opa_eval.OpaEval(str(POLICY), json.dumps(self.data), "data.iam.allow")

    def check(self, principal: str, permission: str, resource: str) -> bool:
        inp = json.dumps({"principal": principal, "permission": permission, "resource": resource,
                          "resource_name": self.m.relname[resource], "time": self.time})
        return self.opa.evaluate_parsed(inp) is True


def build(wl: Any) -> RegoEngine:
    return RegoEngine(build_model(wl))


def check(engine: RegoEngine, principal: str, permission: str, resource: str) -> bool:
    return engine.check(principal, permission, resource)


def write(engine: RegoEngine, resource: str, policy: dict[str, Any]) -> None:
    bl = [Binding(b["role"], tuple(norm_member(x) for x in b["members"]),
                  parse_condition(b["condition"]["expression"]) if b.get("condition") else None)
          for b in policy.get("bindings", [])]
    engine.m.bindings[resource] = bl
    engine.data["bindings"][resource] = [_binding(b) for b in bl]
    for b in bl:
        if b.role not in engine.data["roles"] and b.role in engine.m.roles:
            engine.data["roles"][b.role] = dict.fromkeys(sorted(engine.m.roles[b.role]), True)
    engine._load()   # opa-eval cannot update data in place
