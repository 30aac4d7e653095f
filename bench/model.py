"""A neutral, normalized view of a workload that every peer translates from.

keycard takes the raw inputs (Cloud Asset Inventory records, groups, custom roles, deny
policies). The peers need the same facts in their own shapes; this module reads the raw
inputs once into plain dicts so each peer's translation is short and the semantics are
stated in one place:

- a resource's parent is ``resource.parent`` (a model version's parent is its model);
- a binding is (role, members, condition); members are lower-cased v1 member strings;
- a role grants nothing when it is DISABLED or deleted; a custom role is valid only on
  nodes inside the organization or project that defines it (bindings outside are dropped);
- deny principals (IAM v2 identifiers) become v1 member strings: ``principal://goog/subject/E``
  → ``user:E``, ``principalSet://goog/group/E`` → ``group:E``, ``principalSet://goog/public:all``
  → ``allUsers``, ``principal://iam.googleapis.com/projects/-/serviceAccounts/E`` →
  ``serviceAccount:E``; deny permissions (``SERVICE.googleapis.com/RESOURCE.VERB``) become v1
  permissions (``cloudresourcemanager`` → ``resourcemanager``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

CRM = "//cloudresourcemanager.googleapis.com/"


def relative_name(full: str) -> str:
    """``//storage.googleapis.com/projects/_/buckets/b`` → ``projects/_/buckets/b``."""
    return full[2:].split("/", 1)[1]


def v2_to_v1_permission(p: str) -> str:
    service, rest = p.split("/", 1)
    prefix = service.removesuffix(".googleapis.com")
    if prefix == "cloudresourcemanager":
        prefix = "resourcemanager"
    return f"{prefix}.{rest}"


def v1_to_v2_permission(p: str) -> str:
    prefix, rest = p.split(".", 1)
    service = "cloudresourcemanager" if prefix == "resourcemanager" else prefix
    return f"{service}.googleapis.com/{rest}"


def v2_to_v1_member(p: str) -> str:
    if p == "principalSet://goog/public:all":
        return "allUsers"
    if p.startswith("principal://goog/subject/"):
        return "user:" + p.removeprefix("principal://goog/subject/").lower()
    if p.startswith("principalSet://goog/group/"):
        return "group:" + p.removeprefix("principalSet://goog/group/").lower()
    if p.startswith("principal://iam.googleapis.com/projects/-/serviceAccounts/"):
        return "serviceAccount:" + p.rsplit("/", 1)[1].lower()
    raise ValueError(f"unsupported deny principal {p!r}")


def norm_member(m: str) -> str:
    if ":" in m:
        kind, rest = m.split(":", 1)
        return f"{kind}:{rest.lower()}"
    return m


# The CEL forms the workload generates, translated for peers that do not speak CEL.
_TIME = re.compile(r'^request\.time\s*(<|<=|>|>=)\s*timestamp\("([^"]+)"\)$')
_PREFIX = re.compile(r'^resource\.name\.startsWith\("([^"]*)"\)$')


@dataclass(frozen=True, slots=True)
class Cond:
    expression: str
    kind: str          # "time" or "prefix"
    op: str            # for time: < <= > >=; for prefix: ""
    value: str         # RFC 3339 timestamp or the prefix

    def ts(self) -> datetime:
        return datetime.fromisoformat(self.value.replace("Z", "+00:00"))


def parse_condition(expr: str) -> Cond:
    e = expr.strip()
    m = _TIME.match(e)
    if m:
        return Cond(expr, "time", m.group(1), m.group(2))
    m = _PREFIX.match(e)
    if m:
        return Cond(expr, "prefix", "", m.group(1))
    raise ValueError(f"condition outside the benchmark's CEL subset: {expr!r}")


@dataclass(slots=True)
class Binding:
    role: str
    members: tuple[str, ...]
    cond: Cond | None


@dataclass(slots=True)
class DenyRule:
    principals: tuple[str, ...]       # v1 member strings
    exceptions: tuple[str, ...]
    permissions: frozenset[str]       # v1, exception permissions already removed
    cond: Cond | None
    raw_denied: frozenset[str] = frozenset()
    raw_excepted: frozenset[str] = frozenset()


@dataclass(slots=True)
class Model:
    parent: dict[str, str | None] = field(default_factory=dict)
    relname: dict[str, str] = field(default_factory=dict)
    atype: dict[str, str] = field(default_factory=dict)
    bindings: dict[str, list[Binding]] = field(default_factory=dict)
    roles: dict[str, frozenset[str]] = field(default_factory=dict)    # only roles that can grant
    dead_roles: set[str] = field(default_factory=set)                 # DISABLED / deleted
    dead_role_perms: dict[str, frozenset[str]] = field(default_factory=dict)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)  # "group:x" -> members
    group_parents: dict[str, list[str]] = field(default_factory=dict)  # member -> groups directly holding it
    deny: dict[str, list[DenyRule]] = field(default_factory=dict)
    principals: set[str] = field(default_factory=set)                 # every user/SA that appears
    time: datetime | None = None

    def chain(self, full: str) -> list[str]:
        out = []
        cur: str | None = full
        while cur is not None:
            out.append(cur)
            cur = self.parent.get(cur)
        return out


def custom_role_scope(role: str, project_by_id: dict[str, str]) -> str | None:
    """The full name of the node that defines a custom role (None for predefined roles)."""
    if role.startswith("organizations/"):
        return CRM + role.split("/roles/")[0]
    if role.startswith("projects/"):
        pid = role.split("/")[1]
        return project_by_id.get(pid, CRM + "projects/" + pid)
    return None


def build_model(wl: Any) -> Model:
    """Normalize a :class:`bench.workload.Workload` (assets, groups, roles, deny policies)."""
    m = Model(time=wl.time)
    project_by_id: dict[str, str] = {}
    raw_policies: dict[str, list[dict[str, Any]]] = {}
    for rec in wl.assets:
        name = rec["name"]
        res = rec.get("resource") or {}
        m.parent[name] = res.get("parent") or None
        m.relname[name] = relative_name(name)
        m.atype[name] = rec.get("assetType", "")
        data = res.get("data") or {}
        if rec.get("assetType") == "cloudresourcemanager.googleapis.com/Project":
            project_by_id[data["projectId"]] = name
        pol = rec.get("iamPolicy")
        if pol and pol.get("bindings"):
            raw_policies[name] = pol["bindings"]
    # roles: the predefined catalog the workload names, then custom roles
    for r in wl.catalog_roles:
        if r.get("stage") == "DISABLED" or r.get("deleted"):
            m.dead_roles.add(r["name"])
        else:
            m.roles[r["name"]] = frozenset(r.get("includedPermissions", ()))
    for r in wl.roles:
        if r.get("stage") == "DISABLED" or r.get("deleted"):
            m.dead_roles.add(r["name"])
            m.dead_role_perms[r["name"]] = frozenset(r.get("includedPermissions", ()))
            m.roles.pop(r["name"], None)
        else:
            m.roles[r["name"]] = frozenset(r.get("includedPermissions", ()))
    for name, bl in raw_policies.items():
        out = []
        chain = None
        for b in bl:
            scope = custom_role_scope(b["role"], project_by_id)
            if scope is not None:
                chain = chain or m.chain(name)
                if scope not in chain:
                    continue
            c = b.get("condition")
            members = tuple(norm_member(x) for x in b["members"])
            out.append(Binding(b["role"], members, parse_condition(c["expression"]) if c else None))
            for x in members:
                if x.startswith(("user:", "serviceAccount:")):
                    m.principals.add(x)
        m.bindings[name] = out
    for g, members in wl.groups.items():
        gk = "group:" + g.lower()
        mem = tuple(norm_member(x) for x in members)
        m.groups[gk] = mem
        for x in mem:
            m.group_parents.setdefault(x, []).append(gk)
            if x.startswith(("user:", "serviceAccount:")):
                m.principals.add(x)
    for dp in wl.deny_policies:
        node = "//" + dp["attachmentPoint"]
        for rule in dp["policy"].get("rules", []):
            dr = rule["denyRule"]
            denied = frozenset(v2_to_v1_permission(p) for p in dr.get("deniedPermissions", []))
            excepted = frozenset(v2_to_v1_permission(p) for p in dr.get("exceptionPermissions", []))
            c = dr.get("denialCondition")
            m.deny.setdefault(node, []).append(DenyRule(
                principals=tuple(v2_to_v1_member(p) for p in dr.get("deniedPrincipals", [])),
                exceptions=tuple(v2_to_v1_member(p) for p in dr.get("exceptionPrincipals", [])),
                permissions=denied - excepted,
                cond=parse_condition(c["expression"]) if c and c.get("expression") else None,
                raw_denied=denied, raw_excepted=excepted,
            ))
    for q in wl.queries:
        m.principals.add(norm_member(q[0]))
    return m


def identity_keys(m: Model, principal: str) -> set[str]:
    """Every v1 member string that matches ``principal``: itself, its domain (users only),
    its groups transitively, allAuthenticatedUsers and allUsers."""
    p = norm_member(principal)
    keys = {p, "allAuthenticatedUsers", "allUsers"}
    if p.startswith("user:"):
        keys.add("domain:" + p.rsplit("@", 1)[1])
    frontier = [p]
    while frontier:
        nxt = []
        for k in frontier:
            for g in m.group_parents.get(k, ()):
                if g not in keys:
                    keys.add(g)
                    nxt.append(g)
        frontier = nxt
    return keys
