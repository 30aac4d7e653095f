"""The diff of a document against a server: resource changes (as steps apply can run), the state after
them, the access delta and the lockout check."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from keycard.pac import steps as S
from keycard.pac.access import SET_IAM, Triple, access_delta, build_engine, lockouts, relative_names, touched_nodes
from keycard.pac.document import ORG_TOKEN, DocumentError
from keycard.pac.live import Live
from keycard.pac.model import (
    ADDITIVE,
    AUTHORITATIVE,
    ORG,
    GroupSpec,
    Node,
    RoleSpec,
    State,
    Where,
    flat,
    merge_additive,
)


@dataclass
class Step:
    action: str                 # create | update | move | add | remove | delete | set
    kind: str                   # folder, project, serviceAccount, role, group, membership, allowPolicy, denyPolicy
    target: str
    detail: str
    run: Callable[[S.Context], None]
    where: Where = field(default_factory=Where)

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "kind": self.kind, "target": self.target, "detail": self.detail,
                **({"declaredAt": str(self.where)} if self.where.file else {})}


@dataclass
class Plan:
    steps: list[Step]
    access: list[Triple]
    lockouts: list[str]
    after: State
    new_grants: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"changes": [s.to_json() for s in self.steps], "access": [t.to_json() for t in self.access],
                "lockouts": self.lockouts, "newResourceGrants": self.new_grants}


def resolve_org(desired: State, number: str) -> State:
    """The document's organization placeholder (organizations/ORG/…) made the server's organization."""
    def fix(text: str) -> str:
        return text.replace(ORG_TOKEN, f"organizations/{number}/")
    out = copy.deepcopy(desired)
    out.organization = f"organizations/{number}"
    out.roles = {fix(k): RoleSpec(fix(r.name), r.title, r.description, r.stage, r.permissions, r.deleted, r.where)
                 for k, r in desired.roles.items()}
    for n in out.nodes.values():
        if n.bindings is not None:
            n.bindings = {(fix(k[0]), k[1]): v for k, v in n.bindings.items()}
    return out


def make_plan(live: Live, desired_doc: State, *, caller: str | None = None) -> Plan:
    """``caller``: the principal apply writes as (``user:…``/``serviceAccount:…``), for the self-lockout check."""
    desired = resolve_org(desired_doc, live.org_number)
    cur = live.state
    after = copy.deepcopy(cur)
    after.organization = cur.organization
    steps: list[Step] = []
    late: list[Step] = []      # access removals run last

    # ---- groups and memberships
    adds: list[Step] = []
    for email, g in desired.groups.items():
        have = cur.groups.get(email)
        if have is None:
            steps.append(Step("create", "group", email, g.display_name or email, S.create_group(g), g.where))
            have = GroupSpec(email)
        elif (g.display_name, g.description) != (have.display_name, have.description):
            steps.append(Step("update", "group", email, f"displayName {g.display_name!r}, description "
                              f"{g.description!r}", S.update_group(g), g.where))
        for m in sorted(g.members - have.members):     # after every group exists (a member may be one)
            adds.append(Step("add", "membership", email, m, S.add_member(email, m), g.where))
        members = g.members | have.members
        if g.mode == AUTHORITATIVE:
            for m in sorted(have.members - g.members):
                late.append(Step("remove", "membership", email, m, S.remove_member(email, m), g.where))
            members = g.members
        after.groups[email] = GroupSpec(email, g.display_name, g.description, frozenset(members), g.mode, g.where)
    steps.extend(adds)

    # ---- custom roles (created before the policies that bind them, after their project; deleted last)
    role_steps: list[Step] = []
    for name, r in desired.roles.items():
        have_r = cur.roles.get(name)
        if have_r is None:
            if not r.deleted:
                role_steps.append(Step("create", "role", name, f"{len(r.permissions)} permissions, stage "
                                       f"{r.stage}", S.create_role(r), r.where))
        elif r.deleted and not have_r.deleted:
            late.append(Step("delete", "role", name, "bindings of it stop granting", S.delete_role(name), r.where))
        elif not r.deleted and have_r.deleted:
            role_steps.append(Step("update", "role", name, "undelete", S.undelete_role(r), r.where))
        elif not r.deleted and r.to_json() != have_r.to_json():
            role_steps.append(Step("update", "role", name, _role_change(have_r, r), S.patch_role(r), r.where))
        if have_r is not None or not r.deleted:
            after.roles[name] = r

    steps.extend(s for s in role_steps if s.target.startswith("organizations/"))
    policy_steps: list[Step] = []
    # ---- resources, parents first
    for n in _ordered(desired):
        have_n = cur.nodes.get(n.id)
        if have_n is None:
            if n.kind == ORG:
                continue
            if n.kind != "serviceAccount" and n.parent not in desired.nodes and n.parent not in cur.nodes:
                raise DocumentError(f"{n.where}: {n.id}: its parent {n.parent} is neither declared nor on the "
                                    "server; declare it (folders are named by their path, e.g. eng/ml).")
            if n.kind == "serviceAccount" and n.parent not in desired.nodes and n.parent not in cur.nodes:
                raise DocumentError(f"{n.where}: {n.id}: project {n.parent.split(':', 1)[1]} is neither declared "
                                    "nor on the server.")
            steps.append(Step("create", n.kind, n.key, _describe(n), S.create_node(n), n.where))
            new = Node(n.kind, n.key, n.parent, dict(n.attrs), AUTHORITATIVE, {}, {}, n.where)
            after.nodes[n.id] = new
            have_n = new
        else:
            anode = after.nodes[n.id]
            if n.kind in ("folder", "project") and n.parent != have_n.parent:
                steps.append(Step("move", n.kind, n.key, f"{have_n.parent} → {n.parent}", S.move_node(n), n.where))
                anode.parent = n.parent
            changed = {k: v for k, v in n.attrs.items() if have_n.attrs.get(k) != v}
            if changed and n.kind in ("project", "serviceAccount"):
                steps.append(Step("update", n.kind, n.key, ", ".join(f"{k} {have_n.attrs.get(k)!r} → {v!r}"
                                                                     for k, v in changed.items()),
                                  S.update_node(n, have_n), n.where))
                anode.attrs.update(n.attrs)
        if n.mode is None:
            continue
        anode = after.nodes[n.id]
        anode.where = n.where
        # deny policies
        want_deny = dict(n.deny or {})
        have_deny = dict(have_n.deny or {})
        for pid, body in want_deny.items():
            if pid not in have_deny:
                policy_steps.append(Step("create", "denyPolicy", f"{n.id}/{pid}", f"{len(body['rules'])} rule(s)",
                                  S.create_deny(n, pid, body), n.where))
            elif have_deny[pid] != body:
                policy_steps.append(Step("update", "denyPolicy", f"{n.id}/{pid}", f"{len(body['rules'])} rule(s)",
                                  S.update_deny(n, pid, body), n.where))
        final_deny = {**have_deny, **want_deny}
        if n.mode == AUTHORITATIVE:
            for pid in sorted(set(have_deny) - set(want_deny)):
                late.append(Step("delete", "denyPolicy", f"{n.id}/{pid}", "not declared (authoritative)",
                                 S.delete_deny(n, pid), n.where))
            final_deny = want_deny
        anode.deny = final_deny
        # allow policy
        want = dict(n.bindings or {}) if n.mode == AUTHORITATIVE else merge_additive(have_n.bindings or {},
                                                                                   n.bindings or {})
        if flat(want) != flat(have_n.bindings):
            added = flat(want) - flat(have_n.bindings)
            removed = flat(have_n.bindings) - flat(want)
            step = Step("set", "allowPolicy", n.id, f"+{len(added)} -{len(removed)} role grants "
                        f"({n.mode})", S.set_policy(n, want), n.where)
            (late if removed else policy_steps).append(step)
        anode.bindings = want
        anode.mode = n.mode

    _check_roles(desired, after)
    steps.extend(s for s in role_steps if not s.target.startswith("organizations/"))
    steps.extend(policy_steps)
    steps.extend(late)
    known = dict(live.names)
    rel = relative_names(after, known)
    old = build_engine(cur, rel, strict=False)
    eng = build_engine(after, rel, strict=True)
    access = access_delta(cur, after, rel, old=old, new=eng)
    policy_nodes = {s.target for s in steps if s.kind == "allowPolicy"}
    locks = lockouts(cur, after, rel, old=old, new=eng, nodes=touched_nodes(cur, after), caller=caller,
                     written=policy_nodes)
    new_grants = [{"resource": rel[i], "node": i, "role": role, "member": m}
                  for i in sorted(set(after.nodes) - set(cur.nodes))
                  for role, _c, m in sorted(flat(after.nodes[i].bindings), key=lambda t: (t[0], t[2]))]
    return Plan(steps, access, locks, after, new_grants)


def _check_roles(desired: State, after: State) -> None:
    """Every role a document binds is predefined or a custom role that exists (and is not deleted) after apply."""
    from keycard.catalog import builtin_roles
    predefined = {str(r["name"]) for r in builtin_roles()}
    for n in desired.nodes.values():
        for role, _cond in sorted(n.bindings or {}, key=lambda k: k[0]):
            custom = after.roles.get(role)
            if role in predefined or (custom is not None and not custom.deleted):
                continue
            shown = role.replace(desired.organization + "/", ORG_TOKEN) if desired.organization else role
            raise DocumentError(f"{n.where}: {n.id}: bindings: role {shown} does not exist"
                                + (" (it is deleted)" if custom is not None else "")
                                + "; use a predefined role (`keycard iam roles find PERMISSION`) or declare the "
                                "custom role under roles:.")


def _ordered(state: State) -> list[Node]:
    rank = {ORG: 0, "folder": 1, "project": 2, "serviceAccount": 3}
    return sorted(state.nodes.values(), key=lambda n: (rank[n.kind], n.key.count("/"), n.key))


def _describe(n: Node) -> str:
    if n.kind == "folder":
        return f"displayName {n.attrs['displayName']!r} under {n.parent}"
    if n.kind == "project":
        return f"under {n.parent}"
    return str(n.attrs.get("displayName") or "")


def _role_change(a: RoleSpec, b: RoleSpec) -> str:
    parts = []
    plus, minus = set(b.permissions) - set(a.permissions), set(a.permissions) - set(b.permissions)
    if plus or minus:
        parts.append(f"permissions +{len(plus)} -{len(minus)}")
    for f in ("title", "description", "stage"):
        if getattr(a, f) != getattr(b, f):
            parts.append(f"{f} {getattr(a, f)!r} → {getattr(b, f)!r}")
    return ", ".join(parts)


__all__ = ["ADDITIVE", "SET_IAM", "Plan", "Step", "make_plan", "resolve_org"]
