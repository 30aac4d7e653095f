"""The writes apply makes, each one Google API call (or a read and a write), in the shapes Google's clients send."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from keycard.client import ApiError, Client
from keycard.pac.live import Live, attachment, policy_path
from keycard.pac.model import (
    ADDITIVE,
    ORG,
    Bindings,
    GroupSpec,
    Node,
    RoleSpec,
    bindings_from_json,
    merge_additive,
    policy_json,
)

DISCUSSION = "cloudidentity.googleapis.com/groups.discussion_forum"
LOCKOUT_HEADER = "X-Keycard-Allow-Lockout"


class ConcurrentChange(Exception):
    """Someone changed what apply was about to write since it was read."""


@dataclass
class Context:
    client: Client
    live: Live
    allow_lockout: bool = False

    @property
    def headers(self) -> dict[str, str]:
        return {LOCKOUT_HEADER: "true"} if self.allow_lockout else {}


Run = Callable[[Context], None]


def _parent_name(ctx: Context, parent_id: str) -> str:
    return ctx.live.names[parent_id]


def _done(ctx: Context, op: dict[str, Any]) -> dict[str, Any]:
    """The resource of a long-running operation (keycard's finish at once; poll otherwise)."""
    for _ in range(50):
        if op.get("done"):
            if "error" in op:
                e = op["error"]
                raise ApiError(400, "FAILED_PRECONDITION", str(e.get("message", e)))
            return dict(op.get("response") or {})
        import time
        time.sleep(0.2)
        op = ctx.client.get(f"/v3/{op['name']}")
    raise ApiError(504, "DEADLINE_EXCEEDED", f"Operation {op.get('name')} did not finish.")


# ---------------------------------------------------------------------------------------- groups
def _group_name(ctx: Context, email: str) -> str:
    if email not in ctx.live.groups:
        found = ctx.client.get("/v1/groups:lookup", **{"groupKey.id": email})
        ctx.live.groups[email] = found["name"]
    return ctx.live.groups[email]


def create_group(g: GroupSpec) -> Run:
    def run(ctx: Context) -> None:
        body: dict[str, Any] = {"groupKey": {"id": g.email}, "parent": f"customers/{ctx.live.customer}",
                                "labels": {DISCUSSION: ""}}
        if g.display_name:
            body["displayName"] = g.display_name
        if g.description:
            body["description"] = g.description
        op = ctx.client.post("/v1/groups", body, initialGroupConfig="EMPTY")
        ctx.live.groups[g.email] = str(op.get("response", op).get("name", ""))
    return run


def update_group(g: GroupSpec) -> Run:
    def run(ctx: Context) -> None:
        ctx.client.patch(f"/v1/{_group_name(ctx, g.email)}", {"displayName": g.display_name,
                                                             "description": g.description},
                         updateMask="displayName,description")
    return run


def add_member(email: str, member: str) -> Run:
    def run(ctx: Context) -> None:
        ctx.client.post(f"/v1/{_group_name(ctx, email)}/memberships",
                        {"preferredMemberKey": {"id": member.split(":", 1)[1]}, "roles": [{"name": "MEMBER"}]})
    return run


def remove_member(email: str, member: str) -> Run:
    def run(ctx: Context) -> None:
        name = ctx.live.memberships.get((email, member))
        if name is None:
            found = ctx.client.get(f"/v1/{_group_name(ctx, email)}/memberships:lookup",
                                   **{"memberKey.id": member.split(":", 1)[1]})
            name = found["name"]
        ctx.client.delete(f"/v1/{name}")
    return run


# ----------------------------------------------------------------------------------------- roles
def _role_body(r: RoleSpec) -> dict[str, Any]:
    return {"title": r.title, "description": r.description, "includedPermissions": list(r.permissions),
            "stage": r.stage}


def create_role(r: RoleSpec) -> Run:
    def run(ctx: Context) -> None:
        parent, rid = r.name.rsplit("/roles/", 1)
        ctx.client.post(f"/v1/{parent}/roles", {"roleId": rid, "role": _role_body(r)})
    return run


def patch_role(r: RoleSpec) -> Run:
    def run(ctx: Context) -> None:
        ctx.client.patch(f"/v1/{r.name}", {**_role_body(r), "etag": ctx.live.role_etags.get(r.name, "")},
                         updateMask="title,description,includedPermissions,stage")
    return run


def undelete_role(r: RoleSpec) -> Run:
    def run(ctx: Context) -> None:
        out = ctx.client.post(f"/v1/{r.name}:undelete", {"etag": ctx.live.role_etags.get(r.name, "")})
        ctx.client.patch(f"/v1/{r.name}", {**_role_body(r), "etag": out.get("etag", "")},
                         updateMask="title,description,includedPermissions,stage")
    return run


def delete_role(name: str) -> Run:
    def run(ctx: Context) -> None:
        ctx.client.delete(f"/v1/{name}", etag=ctx.live.role_etags.get(name) or None)
    return run


# --------------------------------------------------------------------------------------- resources
def create_node(n: Node) -> Run:
    def run(ctx: Context) -> None:
        if n.kind == "folder":
            made = _done(ctx, ctx.client.post("/v3/folders", {"parent": _parent_name(ctx, n.parent),
                                                              "displayName": n.attrs["displayName"]}))
            ctx.live.names[n.id] = made["name"]
        elif n.kind == "project":
            body: dict[str, Any] = {"projectId": n.key, "parent": _parent_name(ctx, n.parent),
                                    "displayName": n.attrs["displayName"]}
            if n.attrs.get("labels"):
                body["labels"] = n.attrs["labels"]
            made = _done(ctx, ctx.client.post("/v3/projects", body))
            ctx.live.names[n.id] = made["name"]
            ctx.live.numbers[n.key] = made["name"].split("/", 1)[1]
        else:
            account, pid = n.key.split("@", 1)[0], n.parent.split(":", 1)[1]
            ctx.client.post(f"/v1/projects/{pid}/serviceAccounts",
                            {"accountId": account, "serviceAccount": {"displayName": n.attrs["displayName"],
                                                                      "description": n.attrs["description"]}})
            if n.attrs.get("disabled"):
                ctx.client.post(f"/v1/projects/{pid}/serviceAccounts/{n.key}:disable", {})
    return run


def move_node(n: Node) -> Run:
    def run(ctx: Context) -> None:
        _done(ctx, ctx.client.post(f"/v3/{ctx.live.names[n.id]}:move",
                                   {"destinationParent": _parent_name(ctx, n.parent)}))
    return run


def update_node(n: Node, have: Node) -> Run:
    def run(ctx: Context) -> None:
        if n.kind == "project":
            _done(ctx, ctx.client.patch(f"/v3/{ctx.live.names[n.id]}", {"displayName": n.attrs["displayName"],
                                                                         "labels": n.attrs.get("labels", {})},
                                        updateMask="displayName,labels"))
            return
        path = policy_path(n, ctx.live)
        if (n.attrs["displayName"], n.attrs["description"]) != (have.attrs.get("displayName"),
                                                                 have.attrs.get("description")):
            ctx.client.patch(path, {"serviceAccount": {"displayName": n.attrs["displayName"],
                                                       "description": n.attrs["description"]},
                                    "updateMask": "displayName,description"})
        if n.attrs["disabled"] != have.attrs.get("disabled"):
            ctx.client.post(path + (":disable" if n.attrs["disabled"] else ":enable"), {})
    return run


# ---------------------------------------------------------------------------------------- policies
def set_policy(n: Node, want: Bindings) -> Run:
    """Read-modify-write with the etag: fails if the policy changed since the plan read it."""
    def run(ctx: Context) -> None:
        path = policy_path(n, ctx.live)
        fresh = ctx.client.post(path + ":getIamPolicy", {"options": {"requestedPolicyVersion": 3}})
        planned = ctx.live.etags.get(n.id)
        if planned is not None and fresh.get("etag") != planned:
            raise ConcurrentChange(f"The allow policy of {n.id} ({path.split('/v3/')[-1]}) changed after it was "
                                   "read for this plan; nothing more was applied. Run `keycard plan` again.")
        keep: Bindings = {}
        if n.kind == "project":     # the project's Google-managed service agents stay as the server made them
            number = ctx.live.numbers.get(n.key, "")
            for k, ms in bindings_from_json(fresh.get("bindings", [])).items():
                managed = frozenset(m for m in ms if number and number in m.split("@", 1)[0])
                if managed:
                    keep[k] = managed
        merged = dict(want)
        if n.mode == ADDITIVE:      # a node created by this apply: keep what the server gave it (its creator)
            merged = merge_additive(bindings_from_json(fresh.get("bindings", [])), want)
        for k, ms in keep.items():
            merged[k] = merged.get(k, frozenset()) | ms
        policy = {**policy_json(merged), "etag": fresh.get("etag", "")}
        try:
            ctx.client.request("POST", path + ":setIamPolicy", json={"policy": policy}, headers=ctx.headers)
        except ApiError as e:
            if e.http_status == 409:
                raise ConcurrentChange(f"The allow policy of {n.id} changed while apply was writing it "
                                       f"({e.message}); nothing more was applied. Run `keycard plan` again."
                                       ) from None
            raise
    return run


def _deny_base(ctx: Context, n: Node) -> str:
    return f"/v2/policies/{attachment(ctx.live.names[n.id])}/denypolicies"


def create_deny(n: Node, pid: str, body: dict[str, Any]) -> Run:
    def run(ctx: Context) -> None:
        ctx.client.post(_deny_base(ctx, n), body, policyId=pid)
    return run


def update_deny(n: Node, pid: str, body: dict[str, Any]) -> Run:
    def run(ctx: Context) -> None:
        etag = ctx.live.deny_etags.get((n.id, pid), "")
        try:
            ctx.client.request("PUT", f"{_deny_base(ctx, n)}/{pid}", json={**body, "etag": etag})
        except ApiError as e:
            if e.http_status == 409:
                raise ConcurrentChange(f"Deny policy {pid} on {n.id} changed after it was read for this plan; "
                                       "nothing more was applied. Run `keycard plan` again.") from None
            raise
    return run


def delete_deny(n: Node, pid: str) -> Run:
    def run(ctx: Context) -> None:
        try:
            ctx.client.delete(f"{_deny_base(ctx, n)}/{pid}", etag=ctx.live.deny_etags.get((n.id, pid)) or None)
        except ApiError as e:
            if e.http_status == 409:
                raise ConcurrentChange(f"Deny policy {pid} on {n.id} changed after it was read for this plan; "
                                       "nothing more was applied. Run `keycard plan` again.") from None
            raise
    return run


__all__ = ["ORG", "ConcurrentChange", "Context"]
