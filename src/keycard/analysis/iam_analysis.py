"""Cloud Asset API v1 ``analyzeIamPolicy``, pure: who has which access on what, from the engine's state.

:func:`analyze` takes an :class:`~keycard.engine.engine.Engine`, a validated :class:`Query` and the
scope (a container's full name) and returns Google's ``IamPolicyAnalysisResult`` list. It reads no
clock, store or network.

Semantics (Google's):

* every allow-policy binding on a node inside the scope is a candidate; with a resource selector only
  bindings on the resource or its ancestors (inheritance), and the access-control list names the selected
  resource; otherwise it names the node the policy is attached to (and, with ``expandResources``, every
  node below it);
* the access selector keeps bindings whose role is one of ``roles`` or holds one of ``permissions``;
  accesses are the matching permissions (all of the role's with ``expandRoles``), else the role;
* the identity selector keeps bindings with a member that matches the identity (itself, a group it
  belongs to transitively, its domain, ``allAuthenticatedUsers``, ``allUsers``); ``expandGroups`` lists
  groups' members transitively (``outputGroupEdges``: the group → member edges);
* a binding's condition is evaluated as IAM does at ``conditionContext.accessTime`` on the selected
  resource: ``TRUE`` keeps it, ``FALSE`` drops it; without an access time a condition over
  ``request.time`` — or one that cannot be evaluated — is ``CONDITIONAL`` (kept and flagged);
* ``analyzeServiceAccountImpersonation``: for every service account among the identities found, the
  identities that can act as it or mint its tokens (``iam.serviceAccounts.actAs``,
  ``getAccessToken``, ``getOpenIdToken``, ``implicitDelegation``, ``signBlob``, ``signJwt``) are added as
  further results, followed transitively;
* deny policies are not part of Google's analysis; keycard adds ``keycardDeniedIdentities`` to a result
  when a deny rule stops an identity it lists (users and service accounts) for one of its permissions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from keycard import names
from keycard.engine.conditions import ConditionContext, ConditionError
from keycard.engine.engine import Engine
from keycard.engine.hierarchy import Node
from keycard.errors import InvalidArgument

__all__ = ["IMPERSONATION_PERMISSIONS", "Query", "analyze", "parse_query"]

IMPERSONATION_PERMISSIONS = ("iam.serviceAccounts.actAs", "iam.serviceAccounts.getAccessToken",
                             "iam.serviceAccounts.getOpenIdToken", "iam.serviceAccounts.implicitDelegation",
                             "iam.serviceAccounts.signBlob", "iam.serviceAccounts.signJwt")
_MAX_HOPS = 4
_PUBLIC = ("allUsers", "allAuthenticatedUsers")


@dataclass(frozen=True)
class Query:
    resource: str | None = None               # canonical full resource name
    identity: str | None = None               # member key
    roles: tuple[str, ...] = ()
    permissions: tuple[str, ...] = ()
    expand_groups: bool = False
    expand_roles: bool = False
    expand_resources: bool = False
    output_resource_edges: bool = False
    output_group_edges: bool = False
    impersonation: bool = False
    access_time: dt.datetime | None = None
    shown_resource: str | None = None         # the resource as the caller wrote it
    extra: dict[str, Any] = field(default_factory=dict)


def _flag(value: object, fld: str) -> bool:
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidArgument(f"Invalid {fld} {value!r}: expected true or false.", field=fld)


def _list(value: object, fld: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidArgument(f"Invalid {fld}: expected a list of strings.", field=fld)
    return tuple(value)


def _time(value: object, fld: str) -> dt.datetime | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"Invalid {fld}: expected an RFC 3339 time.", field=fld)
    text = value.strip()
    text = text[:-1] + "+00:00" if text[-1:] in "Zz" else text
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(f"Invalid {fld} {value!r}: expected an RFC 3339 time such as "
                              "'2026-01-01T00:00:00Z'.", field=fld) from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def parse_query(engine: Engine, q: Mapping[str, Any], prefix: str = "analysisQuery") -> Query:
    """Validate an IamPolicyAnalysisQuery (JSON, nested) into a :class:`Query`."""
    if not isinstance(q, Mapping):
        raise InvalidArgument(f"Invalid {prefix}: expected an object.", field=prefix)
    rs = q.get("resourceSelector") or {}
    ids = q.get("identitySelector") or {}
    acc = q.get("accessSelector") or {}
    opts = q.get("options") or {}
    ctx = q.get("conditionContext") or {}
    for name, obj in (("resourceSelector", rs), ("identitySelector", ids), ("accessSelector", acc),
                      ("options", opts), ("conditionContext", ctx)):
        if not isinstance(obj, Mapping):
            raise InvalidArgument(f"Invalid {prefix}.{name}: expected an object.", field=f"{prefix}.{name}")
    resource = shown = None
    if rs.get("fullResourceName"):
        shown = str(rs["fullResourceName"])
        resource = engine.canonical_name(names.parse_resource(
            shown, f"{prefix}.resourceSelector.fullResourceName").full)
    identity = None
    if ids.get("identity"):
        identity = names.parse_member(str(ids["identity"]), f"{prefix}.identitySelector.identity")
    roles = _list(acc.get("roles"), f"{prefix}.accessSelector.roles")
    for i, r in enumerate(roles):
        names.parse_role_name(r, f"{prefix}.accessSelector.roles[{i}]")
    perms = tuple(names.parse_permission(p, f"{prefix}.accessSelector.permissions[{i}]")
                  for i, p in enumerate(_list(acc.get("permissions"), f"{prefix}.accessSelector.permissions")))
    if resource is None and identity is None:
        raise InvalidArgument(f"Invalid {prefix}.resourceSelector: set resourceSelector.fullResourceName or "
                              "identitySelector.identity (or both).", field=f"{prefix}.resourceSelector")
    o = f"{prefix}.options"
    return Query(resource=resource, identity=identity, roles=roles, permissions=perms,
                 expand_groups=_flag(opts.get("expandGroups"), f"{o}.expandGroups"),
                 expand_roles=_flag(opts.get("expandRoles"), f"{o}.expandRoles"),
                 expand_resources=_flag(opts.get("expandResources"), f"{o}.expandResources"),
                 output_resource_edges=_flag(opts.get("outputResourceEdges"), f"{o}.outputResourceEdges"),
                 output_group_edges=_flag(opts.get("outputGroupEdges"), f"{o}.outputGroupEdges"),
                 impersonation=_flag(opts.get("analyzeServiceAccountImpersonation"),
                                     f"{o}.analyzeServiceAccountImpersonation"),
                 access_time=_time(ctx.get("accessTime"), f"{prefix}.conditionContext.accessTime"),
                 shown_resource=shown)


# ============================================================================================ analysis
def _in_scope(engine: Engine, node: Node, scope: str | None) -> bool:
    if scope is None:
        return True
    return any(n.name == scope for n in engine._h.chain(node))


def _descendants(children: dict[str, list[str]], node: Node) -> list[str]:
    out: list[str] = []
    stack = [node.name]
    while stack:
        for c in children.get(stack.pop(), ()):
            out.append(c)
            stack.append(c)
    return out


def _children(engine: Engine) -> dict[str, list[str]]:
    """parent name → child names, for expandResources (built once per analysis)."""
    out: dict[str, list[str]] = {}
    for n in list(engine._h.nodes.values()):
        if n.parent is not None:
            out.setdefault(n.parent.name, []).append(n.name)
    return out


def _condition(engine: Engine, binding: Any, resource: str, q: Query) -> str | None:
    """TRUE / CONDITIONAL for a kept binding; None when the condition is false."""
    if binding.condition is None:
        return "TRUE"
    compiled = binding.condition.compiled
    if compiled is None:
        return "CONDITIONAL"
    if q.access_time is None and "request.time" in binding.condition.expression:
        return "CONDITIONAL"
    when = q.access_time or dt.datetime.now(dt.UTC)
    ctx: ConditionContext = engine._context(resource, when)
    try:
        value = compiled.evaluate(ctx)
    except ConditionError:
        return "CONDITIONAL"
    return "TRUE" if value else None


def _members(engine: Engine, members: Iterable[str], q: Query, keys: frozenset[str] | None
             ) -> tuple[list[str], list[dict[str, str]]]:
    out: list[str] = []
    edges: list[dict[str, str]] = []
    for m in members:
        if keys is not None and m not in keys:
            continue
        out.append(m)
        if q.expand_groups and m.startswith("group:") and keys is None:
            seen = {m}
            stack = [m]
            while stack:
                g = stack.pop()
                for x in engine._groups._members.get(g, ()):
                    edges.append({"sourceNode": g, "targetNode": x})
                    if x not in out:
                        out.append(x)
                    if x.startswith("group:") and x not in seen:
                        seen.add(x)
                        stack.append(x)
    if keys is not None and q.identity is not None and out and q.identity not in out:
        for m in list(out):
            if m.startswith("group:") and q.expand_groups:
                edges.append({"sourceNode": m, "targetNode": q.identity})
        out.append(q.identity)
    return out, edges


def analyze(engine: Engine, q: Query, scope: str | None) -> list[dict[str, Any]]:
    """Google's analysisResults for ``q`` over the policies attached inside ``scope`` (full name)."""
    results = _analyze_once(engine, q, scope)
    if q.impersonation:
        done: set[str] = set()
        frontier = _service_accounts(results)
        for _ in range(_MAX_HOPS):
            nxt: list[str] = []
            for sa in frontier:
                if sa in done:
                    continue
                done.add(sa)
                email = sa.split(":", 1)[1]
                project = email.split("@", 1)[1].split(".", 1)[0]
                target = engine.canonical_name(f"//iam.googleapis.com/projects/{project}/serviceAccounts/{email}")
                sub = Query(resource=target, permissions=IMPERSONATION_PERMISSIONS, expand_groups=q.expand_groups,
                            output_group_edges=q.output_group_edges, access_time=q.access_time)
                found = _analyze_once(engine, sub, scope)
                for r in found:
                    r["keycardImpersonates"] = sa
                results += found
                nxt += _service_accounts(found)
            frontier = nxt
            if not frontier:
                break
    return results


def _service_accounts(results: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in results:
        for ident in r["identityList"]["identities"]:
            if ident["name"].startswith("serviceAccount:") and ident["name"] not in out:
                out.append(ident["name"])
    return out


def _analyze_once(engine: Engine, q: Query, scope: str | None) -> list[dict[str, Any]]:
    h = engine._h
    if q.resource is not None:
        _node, chain = engine._resolve(q.resource)
        nodes = list(chain)
    else:
        nodes = [n for n in list(h.nodes.values()) if n.policy is not None]
    keys = frozenset(engine.identity_keys(q.identity)) if q.identity is not None else None
    want_roles = set(q.roles)
    want_perms = set(q.permissions)
    children = _children(engine) if q.resource is None and q.expand_resources else {}
    out: list[dict[str, Any]] = []
    for n in nodes:
        pol = n.policy
        if pol is None or not pol.bindings or not _in_scope(engine, n, scope):
            continue
        for i, b in enumerate(pol.bindings):
            handle = engine._roles.handle(b.role)
            if handle.role is None or handle.state != "ok":
                continue
            perms = handle.perms
            if (want_roles or want_perms) and b.role not in want_roles and not (want_perms & perms):
                continue
            if keys is not None and keys.isdisjoint(b.members):
                continue
            if handle.scope is not None:
                grant = next((g for g in (n.allow or {}).get(b.members[0], []) if g.index == i), None)
                if grant is not None and not engine._in_scope(grant):
                    continue
            resources = [q.resource] if q.resource is not None else [n.name]
            if q.resource is None and q.expand_resources:
                resources += _descendants(children, n)
            evaluation = _condition(engine, b, resources[0], q)
            if evaluation is None:
                continue
            if want_perms and not (q.expand_roles and not want_perms):
                accesses = [{"permission": p} for p in sorted(want_perms & perms)] \
                    if b.role not in want_roles else [{"role": b.role}]
            elif q.expand_roles:
                accesses = [{"permission": p} for p in sorted(perms)]
            else:
                accesses = [{"role": b.role}]
            members, edges = _members(engine, b.members, q, keys)
            acl: dict[str, Any] = {"resources": [{"fullResourceName": r} for r in resources],
                                   "accesses": accesses}
            if q.output_resource_edges and q.resource is not None and n.name != q.resource:
                chain_names = [x.name for x in engine._resolve(q.resource)[1]]
                path = chain_names[:chain_names.index(n.name) + 1] if n.name in chain_names else []
                acl["resourceEdges"] = [{"sourceNode": path[k + 1], "targetNode": path[k]}
                                        for k in range(len(path) - 1)]
            if b.condition is not None:
                acl["conditionEvaluation"] = {"evaluationValue": evaluation}
            identity_list: dict[str, Any] = {"identities": [{"name": m} for m in members]}
            if q.output_group_edges and edges:
                identity_list["groupEdges"] = edges
            binding: dict[str, Any] = {"role": b.role, "members": list(b.members)}
            if b.condition is not None:
                binding["condition"] = {"expression": b.condition.expression,
                                        **({"title": b.condition.title} if b.condition.title else {})}
            result: dict[str, Any] = {"attachedResourceFullName": n.name, "iamBinding": binding,
                                      "accessControlLists": [acl], "identityList": identity_list,
                                      "fullyExplored": True}
            denied = _denied(engine, members, accesses, resources[0], q)
            if denied:
                result["keycardDeniedIdentities"] = denied
            out.append(result)
    return out


def _denied(engine: Engine, members: list[str], accesses: list[dict[str, str]], resource: str, q: Query
            ) -> list[dict[str, str]]:
    if not engine._h.deny_nodes:
        return []
    perms = [a["permission"] for a in accesses if "permission" in a]
    out = []
    for m in members:
        if not m.startswith(("user:", "serviceAccount:", "principal://")):
            continue
        for p in perms:
            reason, _ = engine.deny_reason(m, p, resource, time=q.access_time)
            if reason is not None:
                out.append({"identity": m, "permission": p, "denyPolicy": reason.policy})
    return out
