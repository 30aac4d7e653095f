"""Cedar (cedarpy, Rust core), modelled the way Cedar is meant to be used.

Entities: every resource is ``R::"<full resource name>"`` with attribute ``name`` (the relative
name, for ``resource.name.startsWith`` conditions) and its parent as Cedar parent; the caller
is ``P::"user:…"`` / ``P::"serviceAccount:…"`` whose parents are the groups it is directly in,
its ``domain:`` (users only) and ``allAuthenticatedUsers`` (all ``Group::…`` entities; groups
have their parent groups as parents). Each permission is an action whose parents are the roles
(action groups) that include it — DISABLED roles are left out, so they grant nothing.

Policies: one ``permit`` per (binding, member): ``permit(principal in Group::"group:g",
action in Action::"roles/x", resource in R::"node") when { <condition> };`` where the CEL
condition becomes Cedar (``request.time < timestamp(T)`` → ``context.now < datetime(T)``,
``resource.name.startsWith(S)`` → ``resource.name like "S*"``). One ``forbid`` per denied
principal with ``unless { <exception principals> }`` and the denial condition; exception
permissions are subtracted from the denied list.

Per request the peer passes only the entities the request needs (the fair, fast way): the
resource's ancestry, the caller with its groups (transitively), and the action with its roles;
and only the policies that can apply (policy slicing, see ``CedarEngine``).
It expresses every case in the workload.
"""

from __future__ import annotations

import json
from typing import Any

import cedarpy

from bench.model import Binding, Cond, DenyRule, Model, build_model

NAME = "cedar"
DESCRIPTION = "cedarpy: permit per (binding, member), forbid per deny principal; per-request entity slices"
UNSUPPORTED: frozenset[str] = frozenset()

_CONTAINERS = ("cloudresourcemanager.googleapis.com/Organization", "cloudresourcemanager.googleapis.com/Folder",
               "cloudresourcemanager.googleapis.com/Project")
_PROJECT = "cloudresourcemanager.googleapis.com/Project"
_OPS = {"<": "<", "<=": "<=", ">": ">", ">=": ">="}


def _q(s: str) -> str:
    return json.dumps(s)


def _principal_scope(member: str) -> str:
    if member == "allUsers":
        return "principal"
    if member.startswith(("user:", "serviceAccount:")):
        return f"principal == P::{_q(member)}"
    return f"principal in Group::{_q(member)}"


def _principal_expr(member: str) -> str:
    if member == "allUsers":
        return "true"
    if member.startswith(("user:", "serviceAccount:")):
        return f"principal == P::{_q(member)}"
    return f"principal in Group::{_q(member)}"


def _cond(c: Cond | None) -> str:
    if c is None:
        return ""
    if c.kind == "time":
        return f" when {{ context.now {_OPS[c.op]} datetime({_q(c.value)}) }}"
    esc = c.value.replace("\\", "\\\\").replace("*", "\\*").replace('"', '\\"')
    return f' when {{ resource.name like "{esc}*" }}'


def binding_policies(node: str, b: Binding) -> list[str]:
    return [f"permit({_principal_scope(m)}, action in Action::{_q(b.role)}, resource in R::{_q(node)}){_cond(b.cond)};"
            for m in b.members]


def deny_policies(node: str, r: DenyRule) -> list[str]:
    if not r.permissions:
        return []
    acts = ", ".join(f"Action::{_q(p)}" for p in sorted(r.permissions))
    unless = ""
    if r.exceptions:
        unless = " unless { " + " || ".join(_principal_expr(e) for e in r.exceptions) + " }"
    return [f"forbid({_principal_scope(p)}, action in [{acts}], resource in R::{_q(node)}){unless}{_cond(r.cond)};"
            for p in r.principals]


def _entity(etype: str, eid: str, parents: list[tuple[str, str]], attrs: dict[str, Any] | None = None) -> str:
    return json.dumps({"uid": {"type": etype, "id": eid}, "attrs": attrs or {},
                       "parents": [{"type": t, "id": i} for t, i in parents]}, separators=(",", ":"))


class CedarEngine:
    def __init__(self, m: Model) -> None:
        self.m = m
        self.used_roles: set[str] = set()
        self.node_texts: dict[str, list[str]] = {}
        for node, bl in m.bindings.items():
            for b in bl:
                if b.role in m.roles:
                    self.node_texts.setdefault(node, []).extend(binding_policies(node, b))
                    self.used_roles.add(b.role)
        for node, rules in m.deny.items():
            for r in rules:
                self.node_texts.setdefault(node, []).extend(deny_policies(node, r))
        # Policy slicing, two levels so no policy is copied into thousands of sets:
        # - upper[c] for every folder / the organization c: the policies on c and its ancestors;
        # - lower[p] for every project p: the policies on p and everything inside it.
        # A request inside project p is evaluated against upper[parent of p] and lower[p]; one on
        # a folder / the organization against upper[itself]. The two answers combine by Cedar's
        # own rule: allowed iff no forbid matched in either and a permit matched in one.
        self.sets_of: dict[str, tuple[str, ...]] = {}
        inside: dict[str, list[str]] = {}
        for n in m.parent:
            t = m.atype.get(n)
            if t in _CONTAINERS and t != _PROJECT:
                self.sets_of[n] = ("U:" + n,)
                continue
            proj: str | None = n
            while proj is not None and m.atype.get(proj) != _PROJECT:
                proj = m.parent.get(proj)
            if proj is None:   # not under a project: treat like a container
                self.sets_of[n] = ("U:" + n,)
                continue
            inside.setdefault(proj, []).append(n)
            up = m.parent.get(proj)
            self.sets_of[n] = ("L:" + proj,) if up is None else ("U:" + up, "L:" + proj)
        self.sets: dict[str, Any] = {}
        self.n_policies = 0
        for n in m.parent:
            t = m.atype.get(n)
            if t in _CONTAINERS and t != _PROJECT:
                self._make("U:" + n, [x for a in m.chain(n) for x in self.node_texts.get(a, ())])
        for proj, nodes in inside.items():
            self._make("L:" + proj, [x for a in nodes for x in self.node_texts.get(a, ())])
        # per-node, per-group and per-permission entity fragments, serialized once
        self.node_frag = {n: _entity("R", n, [("R", p)] if (p := m.parent.get(n)) else [],
                                     {"name": m.relname[n]}) for n in m.parent}
        self.group_frag = {g: _entity("Group", g, [("Group", x) for x in m.group_parents.get(g, ())])
                           for g in m.groups}
        perm_roles: dict[str, list[str]] = {}
        for role in self.used_roles:
            for p in m.roles[role]:
                perm_roles.setdefault(p, []).append(role)
        self.perm_roles = perm_roles
        self.action_frag: dict[str, str] = {}
        assert m.time is not None
        self.context = json.dumps({"now": {"__extn": {"fn": "datetime",
                                                      "arg": m.time.strftime("%Y-%m-%dT%H:%M:%SZ")}}})

    def _make(self, key: str, texts: list[str]) -> None:
        self.n_policies += len(texts)
        self.sets[key] = cedarpy.PolicySet.from_str("\n".join(texts))

    def _action(self, perm: str) -> str:
        f = self.action_frag.get(perm)
        if f is None:
            f = self.action_frag[perm] = _entity("Action", perm, [("Action", r) for r in self.perm_roles.get(perm, ())])
        return f

    def _slices(self, principal: str, permission: str, resource: str, out: dict[str, str]) -> None:
        m = self.m
        cur: str | None = resource
        while cur is not None:
            if cur not in out:
                out[cur] = self.node_frag[cur]
            cur = m.parent.get(cur)
        gp = m.group_parents
        parents = [("Group", g) for g in gp.get(principal, ())]
        if principal.startswith("user:"):
            parents.append(("Group", "domain:" + principal.rsplit("@", 1)[1]))
        parents.append(("Group", "allAuthenticatedUsers"))
        out["P:" + principal] = _entity("P", principal, parents)
        frontier = list(gp.get(principal, ()))
        while frontier:
            g = frontier.pop()
            if g not in out:
                out[g] = self.group_frag[g]
                frontier.extend(gp.get(g, ()))
        out["A:" + permission] = self._action(permission)

    def request(self, principal: str, permission: str, resource: str) -> dict[str, Any]:
        return {"principal": {"type": "P", "id": principal}, "action": {"type": "Action", "id": permission},
                "resource": {"type": "R", "id": resource}, "context": self.context}

    def check(self, principal: str, permission: str, resource: str) -> bool:
        frags: dict[str, str] = {}
        self._slices(principal, permission, resource, frags)
        ents = "[" + ",".join(frags.values()) + "]"
        req = self.request(principal, permission, resource)
        keys = self.sets_of[resource]
        if len(keys) == 1:
            return cedarpy.is_authorized(req, self.sets[keys[0]], ents).allowed
        handle = cedarpy.Entities.from_json_str(ents)
        permit = False
        for k in keys:
            r = cedarpy.is_authorized(req, self.sets[k], handle)
            if r.allowed:
                permit = True
            elif r.diagnostics.reasons:   # denied with determining policies: a forbid matched
                return False
        return permit

    def check_batch(self, queries: list[tuple[str, str, str]]) -> list[bool]:
        """One is_authorized_batch call per policy set, entities the union of the slices."""
        groups: dict[str, list[int]] = {}
        frags: dict[str, str] = {}
        reqs = []
        for i, (p, perm, res) in enumerate(queries):
            self._slices(p, perm, res, frags)
            reqs.append(self.request(p, perm, res))
            for k in self.sets_of[res]:
                groups.setdefault(k, []).append(i)
        handle = cedarpy.Entities.from_json_str("[" + ",".join(frags.values()) + "]")
        permit = [False] * len(queries)
        forbid = [False] * len(queries)
        for key, idx in groups.items():
            for i, r in zip(idx, cedarpy.is_authorized_batch([reqs[i] for i in idx], self.sets[key], handle),
                            strict=True):
                if r.allowed:
                    permit[i] = True
                elif r.diagnostics.reasons:
                    forbid[i] = True
        return [a and not f for a, f in zip(permit, forbid, strict=True)]


def build(wl: Any) -> CedarEngine:
    return CedarEngine(build_model(wl))


def check(engine: CedarEngine, principal: str, permission: str, resource: str) -> bool:
    return engine.check(principal, permission, resource)


def check_batch(engine: CedarEngine, queries: list[tuple[str, str, str]]) -> list[bool]:
    return engine.check_batch(queries)


def write(engine: CedarEngine, resource: str, policy: dict[str, Any]) -> None:
    """setIamPolicy: bindings added to a resource become new permits (PolicySet.with_added_str,
    which parses only the fragment); a removed binding would need a full rebuild."""
    from bench.model import norm_member, parse_condition

    new = [Binding(b["role"], tuple(norm_member(x) for x in b["members"]),
                   parse_condition(b["condition"]["expression"]) if b.get("condition") else None)
           for b in policy.get("bindings", [])]
    old = engine.m.bindings.get(resource, [])
    old_keys = {(b.role, b.members, b.cond) for b in old}
    added = [b for b in new if (b.role, b.members, b.cond) not in old_keys]
    engine.m.bindings[resource] = new
    if old_keys - {(b.role, b.members, b.cond) for b in new}:
        engine.__init__(engine.m)  # type: ignore[misc]  # a removal: Cedar has no policy delete, rebuild
        return
    frag = []
    for b in added:
        if b.role in engine.m.roles:
            frag.extend(binding_policies(resource, b))
            for p in engine.m.roles[b.role]:
                if b.role not in engine.perm_roles.setdefault(p, []):
                    engine.perm_roles[p].append(b.role)
                    engine.action_frag.pop(p, None)
    if not frag:
        return
    engine.node_texts.setdefault(resource, []).extend(frag)
    text = "\n".join(frag)
    t = engine.m.atype.get(resource)
    if t in _CONTAINERS and t != _PROJECT:   # every upper set at or below this folder / the org
        keys = [k for k in engine.sets if k.startswith("U:") and resource in engine.m.chain(k[2:])]
    else:
        keys = [engine.sets_of[resource][-1]]
    for k in keys:
        engine.sets[k] = engine.sets[k].with_added_str(text)
