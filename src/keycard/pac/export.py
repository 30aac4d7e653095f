"""A State written back as a policy document (the format docs/policy-as-code.md describes)."""

from __future__ import annotations

from typing import Any

from keycard.pac.document import ORG_TOKEN
from keycard.pac.model import ORG, Node, RoleSpec, State, policy_json


def to_document(state: State) -> dict[str, Any]:
    org_prefix = f"{state.organization}/" if state.organization else "\0"

    def fix(text: str) -> str:
        return ORG_TOKEN + text[len(org_prefix):] if text.startswith(org_prefix) else text

    def iam(n: Node, out: dict[str, Any]) -> dict[str, Any]:
        if n.mode is None:
            return out
        out["iam"] = n.mode
        bindings = policy_json(n.bindings or {})["bindings"]
        out["bindings"] = [{**b, "role": fix(b["role"])} for b in bindings]
        if n.deny or n.kind != "serviceAccount":
            out["denyPolicies"] = [{"id": pid, **body} for pid, body in sorted((n.deny or {}).items())]
        return out

    def roles(prefix: str) -> list[dict[str, Any]]:
        return [_role(r, fix(r.name)) for name, r in sorted(state.roles.items())
                if name.rsplit("/roles/", 1)[0] == prefix and not r.deleted]

    doc: dict[str, Any] = {}
    nodes = sorted(state.nodes.values(), key=lambda n: (n.kind, n.key))
    org = state.nodes.get(ORG)
    if org is not None:
        doc["organization"] = iam(org, {})
        doc["organization"]["roles"] = roles(state.organization)
    doc["folders"] = [iam(n, {"path": n.key}) for n in nodes if n.kind == "folder"]
    doc["projects"] = [iam(n, {"projectId": n.key, "displayName": n.attrs.get("displayName", n.key),
                               "parent": n.parent.removeprefix("folder:"), "labels": n.attrs.get("labels", {}),
                               "roles": roles(f"projects/{n.key}")})
                       for n in nodes if n.kind == "project"]
    doc["serviceAccounts"] = [iam(n, {"email": n.key, "displayName": n.attrs.get("displayName", ""),
                                      "description": n.attrs.get("description", ""),
                                      "disabled": bool(n.attrs.get("disabled", False))})
                              for n in nodes if n.kind == "serviceAccount"]
    doc["groups"] = [{"email": g.email, "displayName": g.display_name, "description": g.description,
                      "membership": "authoritative", "members": sorted(g.members)}
                     for _e, g in sorted(state.groups.items())]
    return {k: v for k, v in doc.items() if v != []}


def _role(r: RoleSpec, name: str) -> dict[str, Any]:
    return {"roleId": name.rsplit("/roles/", 1)[1], "title": r.title, "description": r.description,
            "stage": r.stage, "permissions": list(r.permissions)}
