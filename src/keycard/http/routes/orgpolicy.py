"""Organization Policy v2 routes (paths and methods as in orgpolicy.v2.json), for organizations, folders and
projects (by id or number)."""

from __future__ import annotations

from typing import Any

from keycard.http.routing import Route, Router
from keycard.services import orgpolicy_api as op


def register(router: Router) -> None:
    def add(method: str, template: str, handler: Any, opid: str, permission: str = "", **kw: Any) -> None:
        router.add(Route(method, template, handler, opid, permission, **kw))

    for kind in ("organizations", "folders", "projects"):
        base = f"/v2/{kind}/{{ident}}"
        pre = f"orgpolicy.{kind}"
        add("GET", base + "/constraints",
            lambda app, ctx, ident, kind=kind: op.list_constraints(
                app.services, ctx.caller, op.node(app.services, kind, ident), ctx.query.get("pageSize"),
                ctx.query.get("pageToken", "")),
            f"{pre}.constraints.list", "orgpolicy.constraints.list", query=("pageSize", "pageToken"),
            summary="List the constraints that can be set on the resource.")
        add("POST", base + "/policies",
            lambda app, ctx, ident, kind=kind: op.create_policy(
                app.services, ctx.caller, op.node(app.services, kind, ident), ctx.body),
            f"{pre}.policies.create", "orgpolicy.policies.create", body=True,
            summary="Create a policy (409 ALREADY_EXISTS when the constraint already has one here).")
        add("GET", base + "/policies",
            lambda app, ctx, ident, kind=kind: op.list_policies(
                app.services, ctx.caller, op.node(app.services, kind, ident), ctx.query.get("pageSize"),
                ctx.query.get("pageToken", "")),
            f"{pre}.policies.list", "orgpolicy.policies.list", query=("pageSize", "pageToken"),
            summary="List the policies set on the resource.")
        add("GET", base + "/policies/{constraint}:getEffectivePolicy",
            lambda app, ctx, ident, constraint, kind=kind: op.get_effective_policy(
                app.services, ctx.caller, op.node(app.services, kind, ident), constraint),
            f"{pre}.policies.getEffectivePolicy", "orgpolicy.policy.get",
            summary="The effective policy of a constraint on the resource, merged along its ancestry.")
        add("GET", base + "/policies/{constraint}",
            lambda app, ctx, ident, constraint, kind=kind: op.get_policy(
                app.services, ctx.caller, op.node(app.services, kind, ident), constraint),
            f"{pre}.policies.get", "orgpolicy.policy.get", summary="Get the policy set on the resource.")
        add("PATCH", base + "/policies/{constraint}",
            lambda app, ctx, ident, constraint, kind=kind: op.update_policy(
                app.services, ctx.caller, op.node(app.services, kind, ident), constraint, ctx.body,
                ctx.query.get("updateMask")),
            f"{pre}.policies.patch", "orgpolicy.policies.update", body=True, query=("updateMask",),
            summary="Update a policy (a stale etag is refused with 409 ABORTED).")
        add("DELETE", base + "/policies/{constraint}",
            lambda app, ctx, ident, constraint, kind=kind: op.delete_policy(
                app.services, ctx.caller, op.node(app.services, kind, ident), constraint, ctx.query.get("etag")),
            f"{pre}.policies.delete", "orgpolicy.policies.delete", query=("etag",),
            summary="Delete a policy (a stale etag is refused with 409 ABORTED).")
