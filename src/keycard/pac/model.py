"""The state both sides of a plan share: what a document declares and what a server holds.

Nodes are keyed the way a document names them (``organization``, ``folder:eng/ml`` — the path of
display names from the organization down —, ``project:PROJECT_ID``, ``serviceAccount:EMAIL``), so
a document applies to any server whatever numbers that server gave its folders and projects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

AUTHORITATIVE, ADDITIVE = "authoritative", "additive"
MODES = (AUTHORITATIVE, ADDITIVE)
ORG = "organization"

Cond = tuple[str, str, str]                    # expression, title, description
BindingKey = tuple[str, Cond | None]           # role, condition
Bindings = dict[BindingKey, frozenset[str]]    # → members


@dataclass(frozen=True)
class Where:
    """Where a declaration is, for error messages and plan lines."""

    file: str = ""
    line: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.file else "(server)"


@dataclass
class Node:
    kind: str                                  # organization | folder | project | serviceAccount
    key: str                                   # "" (organization), folder path, project id, account email
    parent: str = ""                           # node id of the parent ("organization", "folder:eng", "project:p")
    attrs: dict[str, Any] = field(default_factory=dict)   # displayName, labels, description, disabled
    mode: str | None = None                    # how bindings/deny policies are declared; None: not managed
    bindings: Bindings | None = None
    deny: dict[str, dict[str, Any]] | None = None   # policy id → {displayName?, rules}
    where: Where = Where()

    @property
    def id(self) -> str:
        return ORG if self.kind == ORG else f"{self.kind}:{self.key}"


@dataclass
class RoleSpec:
    name: str                                  # organizations/N/roles/R or projects/P/roles/R
    title: str = ""
    description: str = ""
    stage: str = "GA"
    permissions: tuple[str, ...] = ()
    deleted: bool = False
    where: Where = Where()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "description": self.description, "stage": self.stage,
                "includedPermissions": list(self.permissions), "deleted": self.deleted}


@dataclass
class GroupSpec:
    email: str
    display_name: str = ""
    description: str = ""
    members: frozenset[str] = frozenset()      # user:…, serviceAccount:…, group:…
    mode: str = AUTHORITATIVE
    where: Where = Where()


@dataclass
class State:
    organization: str = ""                     # organizations/NUMBER ("" in a document: the server's)
    nodes: dict[str, Node] = field(default_factory=dict)          # node id → node
    roles: dict[str, RoleSpec] = field(default_factory=dict)      # role name → role
    groups: dict[str, GroupSpec] = field(default_factory=dict)    # email → group

    def children(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for n in self.nodes.values():
            if n.kind != ORG:
                out.setdefault(n.parent, []).append(n.id)
        return out

    def descendants(self, ids: set[str]) -> set[str]:
        kids = self.children()
        out, stack = set(ids), list(ids)
        while stack:
            for c in kids.get(stack.pop(), ()):
                if c not in out:
                    out.add(c)
                    stack.append(c)
        return out


def binding_json(key: BindingKey, members: frozenset[str]) -> dict[str, Any]:
    role, cond = key
    out: dict[str, Any] = {"role": role, "members": sorted(members)}
    if cond is not None:
        c = {"expression": cond[0]}
        if cond[1]:
            c["title"] = cond[1]
        if cond[2]:
            c["description"] = cond[2]
        out["condition"] = c
    return out


def policy_json(bindings: Bindings) -> dict[str, Any]:
    """An IAM v1 Policy (version 3 when a binding has a condition), bindings in a stable order."""
    items = [binding_json(k, m) for k, m in sorted(bindings.items(), key=lambda kv: (kv[0][0], kv[0][1] or ("",)))
             if m]
    version = 3 if any("condition" in b for b in items) else 1
    return {"version": version, "bindings": items}


def bindings_from_json(items: list[dict[str, Any]]) -> Bindings:
    out: dict[BindingKey, frozenset[str]] = {}
    for b in items:
        c = b.get("condition")
        cond = (str(c.get("expression", "")), str(c.get("title", "")), str(c.get("description", ""))) if c else None
        key = (str(b["role"]), cond)
        out[key] = out.get(key, frozenset()) | frozenset(str(m) for m in b.get("members", []))
    return {k: v for k, v in out.items() if v}


def merge_additive(current: Bindings, declared: Bindings) -> Bindings:
    out = dict(current)
    for k, m in declared.items():
        out[k] = out.get(k, frozenset()) | m
    return out


def flat(bindings: Bindings | None) -> set[tuple[str, Cond | None, str]]:
    return {(k[0], k[1], m) for k, ms in (bindings or {}).items() for m in ms}
