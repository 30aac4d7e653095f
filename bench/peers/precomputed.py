"""The design note's "simple precomputed pure-Python index": the league keycard's engine must stay in.

BENCHMARKS.md measures it at ≈ 1.5 µs per check at the small scale. Everything that can be is
computed at load, in plain dicts, tuples and frozensets:

- per node, ``member → frozenset of permissions`` of its unconditional bindings (the union of their
  live roles' permissions, one shared set per distinct combination of roles), plus its conditional
  bindings and deny rules as ``(members, permissions, condition)`` tuples;
- per resource (every one, at load), its ancestry flattened into three tuples: the member indexes
  nearest first, the conditional bindings, the deny rules;
- per principal (cached on first use, as keycard caches identities), its member keys: itself, its
  domain, its groups transitively, ``allAuthenticatedUsers``, ``allUsers``.

A check probes each index of the chain with each key (``perm in set``), then, if nothing granted,
the conditional bindings; if something granted, the deny rules. Conditions are the workload's two
shapes (time window, ``resource.name.startsWith``) evaluated in Python. It decides exactly like
IAM on this workload but explains nothing, keeps no role handles (a role edit means a rebuild)
and pays for its speed in memory and load time. From ``keycard.hugepages.WORTH_FROM`` bindings its
heap goes on huge pages, as keycard's does, so that what the two compare is the index.
"""

from __future__ import annotations

import operator
from typing import Any

from bench.model import Cond, Model, build_model, norm_member, relative_name
from keycard import hugepages

NAME = "precomputed"
DESCRIPTION = ("pure-Python: per node member → frozenset(permissions), per resource its flattened ancestry; "
               "no explanations")
UNSUPPORTED: frozenset[str] = frozenset()

_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
Rule = tuple[frozenset[str], frozenset[str], frozenset[str], Cond | None]   # members, exceptions, perms, cond


class Precomputed:
    def __init__(self, m: Model) -> None:
        self.m = m
        self.time = m.time
        self.keys: dict[str, tuple[tuple[str, ...], frozenset[str]]] = {}
        shared: dict[frozenset[str], frozenset[str]] = {}
        allow: dict[str, dict[str, frozenset[str]]] = {}
        conds: dict[str, tuple[Rule, ...]] = {}
        for node, bindings in m.bindings.items():
            roles: dict[str, list[str]] = {}
            cl: list[Rule] = []
            for b in bindings:
                perms = m.roles.get(b.role)
                if perms is None:
                    continue                    # DISABLED, deleted or unknown: grants nothing
                if b.cond is None:
                    for x in b.members:
                        roles.setdefault(x, []).append(b.role)
                else:
                    cl.append((frozenset(b.members), frozenset(), perms, b.cond))
            idx: dict[str, frozenset[str]] = {}
            for x, rs in roles.items():
                key = frozenset(rs)
                s = shared.get(key)
                if s is None:
                    s = shared[key] = frozenset().union(*(m.roles[r] for r in rs))
                idx[x] = s
            if idx:
                allow[node] = idx
            if cl:
                conds[node] = tuple(cl)
        deny = {node: tuple((frozenset(r.principals), frozenset(r.exceptions), r.permissions, r.cond) for r in rules)
                for node, rules in m.deny.items()}
        self.chains: dict[str, tuple[tuple[dict[str, frozenset[str]], ...], tuple[Rule, ...], tuple[Rule, ...]]] = {}
        for name in m.parent:
            chain = m.chain(name)
            self.chains[name] = (tuple(allow[n] for n in chain if n in allow),
                                 tuple(r for n in chain for r in conds.get(n, ())),
                                 tuple(r for n in chain for r in deny.get(n, ())))
        self.n_policies = len(allow)

    def identity(self, principal: str) -> tuple[tuple[str, ...], frozenset[str]]:
        p = norm_member(principal)
        out = [p]
        if p.startswith("user:"):
            out.append("domain:" + p.rsplit("@", 1)[1])
        seen = set(out)
        frontier = [p]
        while frontier:
            for g in self.m.group_parents.get(frontier.pop(), ()):
                if g not in seen:
                    seen.add(g)
                    out.append(g)
                    frontier.append(g)
        out += ["allAuthenticatedUsers", "allUsers"]
        k = self.keys[principal] = (tuple(out), frozenset(out))
        return k

    def holds(self, cond: Cond | None, resource: str) -> bool:
        if cond is None:
            return True
        if cond.kind == "time":
            return bool(_OPS[cond.op](self.time, cond.ts()))
        return (self.m.relname.get(resource) or relative_name(resource)).startswith(cond.value)

    def check(self, principal: str, permission: str, resource: str) -> bool:
        keys, kset = self.keys.get(principal) or self.identity(principal)
        chain = self.chains.get(resource)
        if chain is None:
            return False
        allowed = False
        for idx in chain[0]:
            for k in keys:
                s = idx.get(k)
                if s is not None and permission in s:
                    allowed = True
                    break
            if allowed:
                break
        else:
            for members, _, perms, cond in chain[1]:
                if permission in perms and not members.isdisjoint(kset) and self.holds(cond, resource):
                    allowed = True
                    break
        if not allowed:
            return False
        for members, exceptions, perms, cond in chain[2]:
            if (permission in perms and not members.isdisjoint(kset) and exceptions.isdisjoint(kset)
                    and self.holds(cond, resource)):
                return False
        return True


def build(wl: Any) -> Precomputed:
    engine = Precomputed(build_model(wl))
    if sum(map(len, engine.m.bindings.values())) >= hugepages.WORTH_FROM:
        hugepages.collapse()    # the huge-page treatment keycard gets: what is compared is the index
    return engine


def check(engine: Precomputed, principal: str, permission: str, resource: str) -> bool:
    return engine.check(principal, permission, resource)
