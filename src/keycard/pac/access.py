"""Who gains and who loses what: the access delta of a plan, decided by keycard's engine.

Two engines are built, one over the current state and one over the state after the plan. Only
the part of the organization a plan can change is examined:

- nodes whose allow or deny policies change, nodes whose bindings name a group whose membership
  changes (or a group that contains one), or a custom role that changes — and all their descendants;
- principals named by a binding on those nodes or their ancestors (in either state), groups
  expanded to every member at any depth (the group itself, ``domain:``, ``allAuthenticatedUsers``
  and ``allUsers`` are reported as principals too).

For each such (principal, node) the engine lists every permission held (``what_can``: ancestry,
groups, custom roles, deny policies) before and after; the differences are the triples. Resources
that only exist after the plan are new, not changed: their grants are listed as resource changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from keycard import names
from keycard.engine.engine import Engine
from keycard.engine.model import parse_deny_policy
from keycard.errors import InvalidArgument
from keycard.pac.document import DocumentError
from keycard.pac.model import ORG, Node, State, flat, policy_json

CRM = "//cloudresourcemanager.googleapis.com/"
SET_IAM = {ORG: "resourcemanager.organizations.setIamPolicy", "folder": "resourcemanager.folders.setIamPolicy",
           "project": "resourcemanager.projects.setIamPolicy", "serviceAccount": "iam.serviceAccounts.setIamPolicy"}


@dataclass(frozen=True, order=True)
class Triple:
    change: str            # gained | lost
    principal: str
    permission: str
    resource: str          # organizations/N, folders/N, projects/P, projects/P/serviceAccounts/E
    conditional: bool = False   # the access (after a gain, before a loss) depends on an IAM Condition

    def to_json(self) -> dict[str, Any]:
        return {"change": self.change, "principal": self.principal, "permission": self.permission,
                "resource": self.resource, "conditional": self.conditional}


def relative_names(state: State, known: dict[str, str]) -> dict[str, str]:
    """Node id → relative resource name (server names where known, placeholders for new folders)."""
    out = {}
    for n in state.nodes.values():
        if n.kind == ORG:
            out[n.id] = state.organization
        elif n.kind == "folder":
            out[n.id] = known.get(n.id) or f"folders/{900_000_000_000 + len(out)}"
        elif n.kind == "project":
            out[n.id] = f"projects/{n.key}"
        else:
            pid = n.key.split("@", 1)[1].split(".", 1)[0]
            out[n.id] = f"projects/{pid}/serviceAccounts/{n.key}"
    return out


def _full(rel: str) -> str:
    return ("//iam.googleapis.com/" if "/serviceAccounts/" in rel else CRM) + rel


def build_engine(state: State, rel: dict[str, str], *, strict: bool) -> Engine:
    """An engine over ``state``. ``strict``: a binding of a role no one defines is an error naming it."""
    eng = Engine()
    for r in state.roles.values():
        eng.put_role({"name": r.name, "title": r.title, "includedPermissions": list(r.permissions),
                      "stage": r.stage, "deleted": r.deleted})
    for n in _parent_first(state):
        eng.add_resource(_full(rel[n.id]), _full(rel[n.parent]) if n.kind != ORG else None)
    for g in state.groups.values():
        try:
            eng.set_group_members(f"group:{g.email}", sorted(g.members))
        except InvalidArgument as e:
            raise DocumentError(f"{g.where}: group {g.email}: {e.message}") from None
    for n in state.nodes.values():
        try:
            if n.bindings:
                eng.set_iam_policy(_full(rel[n.id]), policy_json(n.bindings),
                                   unknown_roles="error" if strict else "ignore")
            for pid, body in (n.deny or {}).items():
                eng.set_deny_policy(_full(rel[n.id]), parse_deny_policy(body, "policy", name=pid))
        except InvalidArgument as e:
            text = e.message.replace("Invalid policy.", "", 1)
            raise DocumentError(f"{n.where}: {n.id}: {text}") from None
    return eng


def _parent_first(state: State) -> list[Node]:
    out: list[Node] = []
    done: set[str] = set()

    def visit(n: Node) -> None:
        if n.id in done:
            return
        if n.kind != ORG:
            p = state.nodes.get(n.parent)
            if p is None:
                raise DocumentError(f"{n.where}: {n.id}: its parent {n.parent} is neither declared nor on the "
                                    "server; declare it (folders are named by their path, e.g. eng/ml).")
            visit(p)
        done.add(n.id)
        out.append(n)
    for n in state.nodes.values():
        visit(n)
    return out


def _group_closure(before: State, after: State, changed: set[str]) -> set[str]:
    """Changed groups and every group that contains one, at any depth, in either state."""
    out = set(changed)
    grew = True
    while grew:
        grew = False
        for st in (before, after):
            for g in st.groups.values():
                if g.email not in out and any(m.startswith("group:") and m[6:] in out for m in g.members):
                    out.add(g.email)
                    grew = True
    return out


def touched_nodes(before: State, after: State) -> set[str]:
    common = set(before.nodes) & set(after.nodes)
    changed = {i for i in common if flat(before.nodes[i].bindings) != flat(after.nodes[i].bindings)
               or (before.nodes[i].deny or {}) != (after.nodes[i].deny or {})
               or before.nodes[i].parent != after.nodes[i].parent}
    groups = {e for e in set(before.groups) | set(after.groups)
              if (before.groups[e].members if e in before.groups else None)
              != (after.groups[e].members if e in after.groups else None)}
    roles = {r for r in set(before.roles) | set(after.roles)
             if (before.roles[r].to_json() if r in before.roles else None)
             != (after.roles[r].to_json() if r in after.roles else None)}
    if groups or roles:
        closure = _group_closure(before, after, groups)
        members = {f"group:{g}" for g in closure}
        sets = {f"principalSet://goog/group/{g}" for g in closure}
        for st in (before, after):
            for n in st.nodes.values():
                if n.id not in common:
                    continue
                named = any(role in roles or m in members for role, _c, m in flat(n.bindings))
                denied = bool(sets) and any(sets & set(r["denyRule"].get(f, [])) for r in _rules(n)
                                            for f in ("deniedPrincipals", "exceptionPrincipals"))
                if named or denied:
                    changed.add(n.id)
    return (before.descendants(changed) | after.descendants(changed)) & common


def _rules(n: Node) -> Iterable[dict[str, Any]]:
    for body in (n.deny or {}).values():
        yield from body.get("rules", [])


def _chain(st: State, nid: str) -> list[str]:
    out = []
    cur: str | None = nid
    while cur is not None and cur in st.nodes:
        out.append(cur)
        n = st.nodes[cur]
        cur = n.parent if n.kind != ORG else None
    return out


def _expand(states: Iterable[State], members: set[str]) -> set[str]:
    """``members`` and, for its groups, every member at any depth in either state."""
    out = set(members)
    for st in states:
        stack = [m[6:] for m in members if m.startswith("group:")]
        seen: set[str] = set()
        while stack:
            g = stack.pop()
            if g in seen or g not in st.groups:
                continue
            seen.add(g)
            for m in st.groups[g].members:
                out.add(m)
                if m.startswith("group:"):
                    stack.append(m[6:])
    return out


def _usable(members: set[str]) -> set[str]:
    good = set()
    for m in members:
        if m in ("allUsers", "allAuthenticatedUsers"):
            good.add(m)
            continue
        try:
            names.parse_member(m)
        except InvalidArgument:
            continue
        if not m.startswith(("deleted:", "projectOwner:", "projectEditor:", "projectViewer:")):
            good.add(m)
    return good


class _Scope:
    """Which principals can have a different access on a node: per node, not the union over all of them.

    A node whose ancestry (itself included) has a deny-policy change, a move, or a binding of a changed
    custom role: everyone its ancestry's bindings name. Otherwise only the members of bindings that
    differ somewhere on its ancestry, and the members (at any depth) that changed groups gained or lost.
    """

    def __init__(self, before: State, after: State) -> None:
        self.states = (before, after)
        common = set(before.nodes) & set(after.nodes)
        roles = {r for r in set(before.roles) | set(after.roles)
                 if (before.roles[r].to_json() if r in before.roles else None)
                 != (after.roles[r].to_json() if r in after.roles else None)}
        self.wide = {i for i in common if (before.nodes[i].deny or {}) != (after.nodes[i].deny or {})
                     or before.nodes[i].parent != after.nodes[i].parent
                     or any(r in roles for st in self.states for r, _c, _m in flat(st.nodes[i].bindings))}
        self.diff: dict[str, set[str]] = {}
        for i in set(before.nodes) | set(after.nodes):
            a = flat(before.nodes[i].bindings) if i in before.nodes else set()
            b = flat(after.nodes[i].bindings) if i in after.nodes else set()
            if a != b:
                self.diff[i] = {m for _r, _c, m in a ^ b}
        moved: set[str] = set()
        for e in set(before.groups) | set(after.groups):
            x = before.groups[e].members if e in before.groups else frozenset()
            y = after.groups[e].members if e in after.groups else frozenset()
            moved |= set(x ^ y)
        self.group_members = _usable(_expand(self.states, moved))

    def principals(self, nid: str) -> set[str]:
        chain = set(_chain(self.states[0], nid)) | set(_chain(self.states[1], nid))
        if chain & self.wide:
            named = {m for st in self.states for c in chain if c in st.nodes
                     for _r, _c, m in flat(st.nodes[c].bindings)}
            return _usable(_expand(self.states, named))
        named = set().union(*(self.diff.get(c, set()) for c in chain))
        return _usable(_expand(self.states, named)) | self.group_members


def _held(eng: Engine, principal: str, resource: str) -> dict[str, bool]:
    """permission → conditional? for every permission ``principal`` holds on ``resource``."""
    who = None if principal == "allUsers" else principal
    return {p: all(a.conditional for a in accesses) for p, accesses in eng.what_can(who, resource).items()}


def access_delta(before: State, after: State, rel: dict[str, str], *, old: Engine, new: Engine) -> list[Triple]:
    nodes = touched_nodes(before, after)
    scope = _Scope(before, after)
    out: list[Triple] = []
    for nid in sorted(nodes):
        resource = _full(rel[nid])
        for p in sorted(scope.principals(nid)):
            was, now = _held(old, p, resource), _held(new, p, resource)
            for perm in was.keys() - now.keys():
                out.append(Triple("lost", p, perm, rel[nid], was[perm]))
            for perm in now.keys() - was.keys():
                out.append(Triple("gained", p, perm, rel[nid], now[perm]))
    out.sort(key=lambda t: (t.resource, t.principal, t.change, t.permission))
    return out


def lockouts(before: State, after: State, rel: dict[str, str], *, old: Engine, new: Engine,
             nodes: set[str], caller: str | None = None, written: frozenset[str] | set[str] = frozenset()
             ) -> list[str]:
    """Nodes that have a holder of their setIamPolicy permission now and would have none after; with
    ``caller``, also the nodes whose policy apply writes and on which the caller would lose it (the
    server refuses those writes itself without X-Keycard-Allow-Lockout)."""
    out = []
    for nid in sorted((nodes | written) & set(before.nodes) & set(after.nodes)):
        n = after.nodes[nid]
        perm, resource = SET_IAM[n.kind], _full(rel[nid])
        if old.who_has(perm, resource) and not new.who_has(perm, resource):
            out.append(f"{rel[nid]} ({nid}): no principal would hold {perm} on it")
        elif caller and nid in written and old.check(caller, perm, resource).allowed \
                and not new.check(caller, perm, resource).allowed:
            out.append(f"{rel[nid]} ({nid}): you ({caller}) would lose {perm} on it")
    return out
