"""``GET /v1/{projects|folders|organizations}/{id}:lintIamPolicies``: keycard's IAM lint of a subtree.

The server builds a :class:`keycard.lint.Snapshot` of the node and everything below it from its
in-memory engine and identity registry (allow policies, deny decisions, service accounts, keys) and
runs the pure rules of :mod:`keycard.lint`. The caller needs the node's getIamPolicy permission (lint
shows the node's policies and those below it, as the troubleshooter does).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keycard import names
from keycard.errors import InvalidArgument, KeycardError
from keycard.lint import SEVERITIES, KeyInfo, PolicyNode, Snapshot, lint
from keycard.services.common import Caller, Services
from keycard.services.recommender import Node, require_exists

__all__ = ["SERVICE", "lint_node", "snapshot"]

SERVICE = "keycard.googleapis.com"
_PERMISSION = {"projects": "resourcemanager.projects.getIamPolicy", "folders": "resourcemanager.folders.getIamPolicy",
               "organizations": "resourcemanager.organizations.getIamPolicy"}


def snapshot(svc: Services, node: str) -> Snapshot:
    engine = svc.runtime.engine
    registry = svc.runtime.identities
    store = svc.runtime.store
    nodes: list[PolicyNode] = []
    seen: set[str] = set()
    for r in engine.resources():
        try:
            full = engine.canonical_name(r)
            if full in seen or node not in engine.ancestry(full):
                continue
        except KeycardError:
            continue
        seen.add(full)
        policy = engine.get_iam_policy(full)
        if policy is not None and policy.bindings:
            nodes.append(PolicyNode(full, names.parse_resource(full).type.rsplit("/", 1)[-1], policy))
    nodes.sort(key=lambda n: n.resource)
    keys: list[KeyInfo] = []
    for k in sorted(registry.keys.values(), key=lambda k: k.key_id):
        acct = registry.account(k.email)
        if acct is None or acct.deleted:
            continue
        project = engine.canonical_name(f"//{names.CRM}/projects/{acct.project_id}")
        try:
            if node not in engine.ancestry(project):
                continue
        except KeycardError:
            continue
        last = k.data.get("keycardLastUsedTime")
        keys.append(KeyInfo(f"{acct.relative}/keys/{k.key_id}", acct.email, k.key_type, k.valid_after,
                            k.valid_before, str(last) if last else None, k.disabled))

    def role_permissions(role: str) -> frozenset[str]:
        found = engine.get_role(role)
        return frozenset(found.permissions) if found is not None and found.grants else frozenset()

    def denied(member: str, permission: str, resource: str) -> bool:
        return engine.deny_reason(member, permission, resource)[0] is not None

    def account_state(email: str) -> str:
        acct = registry.account(email)
        if acct is not None:
            return "deleted" if acct.deleted else "active"
        domain = email.rpartition("@")[2]
        if domain.endswith(".iam.gserviceaccount.com") and store.get("project_id", domain.split(".", 1)[0]):
            return "absent"
        return "unknown"

    return Snapshot(nodes, keys, svc.clock(), role_permissions, denied, account_state)


def lint_node(svc: Services, caller: Caller, node: Node, query: Mapping[str, str]) -> dict[str, Any]:
    svc.authorize(caller, _PERMISSION[node.kind], node.full, service=SERVICE, shown=f"//{names.CRM}/{node.written}")
    require_exists(svc, node)
    floor = str(query.get("minSeverity") or "LOW").upper()
    if floor not in SEVERITIES:
        raise InvalidArgument(f"Invalid minSeverity {floor!r}: use one of {', '.join(SEVERITIES)}.",
                              field="minSeverity")
    found = lint(snapshot(svc, node.full), min_severity=floor)
    counts = {s: sum(1 for f in found if f.severity == s) for s in SEVERITIES}
    return {"findings": [f.to_json() for f in found], "summary": counts}
