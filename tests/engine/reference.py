"""A deliberately simple reference evaluator of Google Cloud IAM, for agreement tests.

It reads the same raw inputs as ``Engine.load`` and decides by brute force:
walk the ancestry, try every deny rule, then every binding, expanding groups by
recursion. A request's extra member keys (a federated token's principal sets, an
IdP token's groups) match as themselves and make every group listing them match.
No indexes, no caches. Conditions use the same CEL compiler (CEL
itself is tested on its own).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from keycard.engine.conditions import ConditionContext, ConditionError, compile_condition

CRM = "//cloudresourcemanager.googleapis.com/"


def v2_to_member(ident: str) -> str:
    if ident == "principalSet://goog/public:all":
        return "allUsers"
    if ident.startswith("principal://goog/subject/"):
        return "user:" + ident.split("/")[-1].lower()
    if ident.startswith("principalSet://goog/group/"):
        return "group:" + ident.split("/")[-1].lower()
    if ident.startswith("principal://iam.googleapis.com/projects/-/serviceAccounts/"):
        return "serviceAccount:" + ident.split("/")[-1].lower()
    return ident


def fqdn_perm(p: str) -> tuple[str, str, str]:
    fqdn, rest = p.split("/", 1)
    svc = "resourcemanager" if fqdn == "cloudresourcemanager.googleapis.com" else fqdn.split(".")[0]
    if rest == "*":
        rest = "*.*"
    res, verb = rest.split(".")
    return svc, res, verb


def perm_in(patterns: list[str], permission: str) -> bool:
    svc, res, verb = permission.split(".")
    for p in patterns:
        ps, pr, pv = fqdn_perm(p)
        if ps == svc and pr in ("*", res) and pv in ("*", verb):
            return True
    return False


class Reference:
    def __init__(self, assets: list[dict[str, Any]], groups: dict[str, list[str]], roles: dict[str, dict[str, Any]],
                 deny_policies: list[dict[str, Any]]) -> None:
        self.parent: dict[str, str | None] = {}
        self.policy: dict[str, list[dict[str, Any]]] = {}
        for a in assets:
            self.parent[a["name"]] = a.get("resource", {}).get("parent")
            self.policy[a["name"]] = a.get("iamPolicy", {}).get("bindings", [])
        self.groups = {("group:" + g.lower()): list(ms) for g, ms in groups.items()}
        self.roles = roles
        self.deny: dict[str, list[dict[str, Any]]] = {}
        for d in deny_policies:
            node = "//" + d["attachmentPoint"]
            for r in d["policy"]["rules"]:
                self.deny.setdefault(node, []).append(r["denyRule"])

    def ancestry(self, resource: str) -> list[str]:
        out = []
        cur: str | None = resource
        while cur is not None:
            out.append(cur)
            cur = self.parent.get(cur)
        return out

    def in_group(self, principal: str, group: str, seen: frozenset[str] = frozenset(),
                 extra: frozenset[str] = frozenset()) -> bool:
        if group in seen:
            return False
        for m in self.groups.get(group, []):
            if self.matches(principal, m, seen | {group}, extra):
                return True
        return False

    def matches(self, principal: str | None, member: str, seen: frozenset[str] = frozenset(),
                extra: frozenset[str] = frozenset()) -> bool:
        if member == "allUsers":
            return True
        if principal is None:
            return False
        if member == "allAuthenticatedUsers":
            return True
        if member == principal or member in extra:
            return True
        if member.startswith("domain:"):
            return principal.startswith("user:") and principal.endswith("@" + member[7:])
        if member.startswith("principalSet://") and member.endswith("/*") and principal.startswith("principal://"):
            return principal.split("/subject/", 1)[0][len("principal://"):] == member[len("principalSet://"):-2]
        if member.startswith("group:"):
            return self.in_group(principal, member, seen, extra)
        return False

    def check(self, principal: str | None, permission: str, resource: str, time: dt.datetime,
              extra: frozenset[str] = frozenset()) -> bool:
        rel = resource.split("/", 3)[3]
        ctx = ConditionContext(request_time=time, resource_name=rel, resource_type="",
                               resource_service=resource.split("/")[2])
        chain = self.ancestry(resource)
        for node in chain:
            for rule in self.deny.get(node, []):
                if not any(self.matches(principal, v2_to_member(p), extra=extra) for p in rule["deniedPrincipals"]):
                    continue
                if any(self.matches(principal, v2_to_member(p), extra=extra)
                       for p in rule.get("exceptionPrincipals", [])):
                    continue
                if not perm_in(rule["deniedPermissions"], permission):
                    continue
                if perm_in(rule.get("exceptionPermissions", []), permission):
                    continue
                cond = rule.get("denialCondition")
                if cond is not None:
                    try:
                        if not compile_condition(cond["expression"]).evaluate(ctx):
                            continue
                    except ConditionError:
                        pass  # fail closed: an erroring denial condition denies
                return False
        for node in chain:
            for b in self.policy.get(node, []):
                role = self.roles.get(b["role"])
                if role is None or role.get("deleted") or role.get("stage") == "DISABLED":
                    continue
                if permission not in role["includedPermissions"]:
                    continue
                scope = role.get("scope")
                if scope is not None and scope not in self.ancestry(node):
                    continue
                if not any(self.matches(principal, m, extra=extra) for m in b["members"]):
                    continue
                cond = b.get("condition")
                if cond is not None:
                    try:
                        if not compile_condition(cond["expression"]).evaluate(ctx):
                            continue
                    except ConditionError:
                        continue
                return True
        return False
