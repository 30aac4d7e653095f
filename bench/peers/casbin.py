"""pycasbin: RBAC with a resource-role hierarchy and allow/deny effects.

Model (``MODEL`` below): policy lines ``p, member, node, role, allow, -`` for every (binding,
member) and ``p, member, node, permission, deny, exc:<rule>`` for every (deny rule, denied
principal, denied permission). Role links: ``g`` principal → group, group → parent group,
user → ``domain:D``, every principal → ``allAuthenticatedUsers`` and ``allUsers``, an exception
principal → ``exc:<rule>``; ``g2`` resource → parent; ``g3`` permission → role (live roles only).
Effect: some allow and no deny.

Cannot express: IAM Conditions (CEL) on bindings and denial conditions. Conditional bindings
and conditional deny rules are left out, and the queries whose decision involves one
(features ``condition`` / ``deny_condition``) are excluded from its comparison and timing.
"""

from __future__ import annotations

from typing import Any

import casbin

from bench.model import Model, build_model, norm_member

NAME = "casbin"
DESCRIPTION = "pycasbin: RBAC, g=member→group, g2=resource→parent, g3=permission→role, allow/deny effect"
UNSUPPORTED: frozenset[str] = frozenset({"condition", "deny_condition"})

MODEL = """
[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act, eft, exc

[role_definition]
g = _, _
g2 = _, _
g3 = _, _

[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))

[matchers]
m = g(r.sub, p.sub) && g2(r.obj, p.obj) && ((p.eft == "allow" && g3(r.act, p.act)) || \
(p.eft == "deny" && r.act == p.act && !g(r.sub, p.exc)))
"""


def _policy_lines(m: Model) -> tuple[list[list[str]], list[list[str]]]:
    p: list[list[str]] = []
    g: list[list[str]] = []
    for node, bl in m.bindings.items():
        for b in bl:
            if b.cond is not None or b.role not in m.roles:
                continue
            for mem in b.members:
                p.append([mem, node, b.role, "allow", "-"])
    k = 0
    for node, rules in m.deny.items():
        for r in rules:
            if r.cond is not None:
                continue
            k += 1
            exc = f"exc:{k}"
            for e in r.exceptions:
                g.append([e, exc])
            for mem in r.principals:
                for perm in sorted(r.permissions):
                    p.append([mem, node, perm, "deny", exc])
    return p, g


class CasbinEngine:
    def __init__(self, m: Model) -> None:
        self.m = m
        model = casbin.Model()
        model.load_model_from_text(MODEL)
        e = casbin.Enforcer(model)
        e.enable_auto_build_role_links(False)
        self.e = e
        p, g = _policy_lines(m)
        for grp, members in m.groups.items():
            for mem in members:
                g.append([mem, grp])
        for pr in m.principals:
            g.append([pr, "allAuthenticatedUsers"])
            g.append([pr, "allUsers"])
            if pr.startswith("user:"):
                g.append([pr, "domain:" + pr.rsplit("@", 1)[1]])
        g2 = [[n, par] for n, par in m.parent.items() if par]
        used = {b.role for bl in m.bindings.values() for b in bl if b.role in m.roles}
        g3 = [[perm, role] for role in used for perm in m.roles[role]]
        e.add_policies(p)
        e.add_named_grouping_policies("g", g)
        e.add_named_grouping_policies("g2", g2)
        e.add_named_grouping_policies("g3", g3)
        e.build_role_links()
        self.n_policies = len(p)

    def check(self, principal: str, permission: str, resource: str) -> bool:
        return bool(self.e.enforce(norm_member(principal), resource, permission))


def build(wl: Any) -> CasbinEngine:
    return CasbinEngine(build_model(wl))


def check(engine: CasbinEngine, principal: str, permission: str, resource: str) -> bool:
    return engine.check(principal, permission, resource)


def write(engine: CasbinEngine, resource: str, policy: dict[str, Any]) -> None:
    """setIamPolicy as casbin's incremental calls: remove the resource's old lines, add the new."""
    e = engine.e
    old = [line for line in e.get_filtered_policy(1, resource) if line[3] == "allow"]
    new = []
    for b in policy.get("bindings", []):
        if b.get("condition") or b["role"] not in engine.m.roles:
            continue
        for mem in b["members"]:
            new.append([norm_member(mem), resource, b["role"], "allow", "-"])
    gone = [x for x in old if x not in new]
    added = [x for x in new if x not in old]
    if gone:
        e.remove_policies(gone)
    if added:
        roles = {x[2] for x in added}
        have = {line[1] for line in e.get_named_grouping_policy("g3")} if roles else set()
        links = [[perm, r] for r in roles - have for perm in engine.m.roles[r]]
        if links:
            e.add_named_grouping_policies("g3", links)
        e.add_policies(added)
