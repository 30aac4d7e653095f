"""Cloud Identity v1 group and membership routes (paths as in cloudidentity.v1.json).

Permissions are keycard's own (Google governs groups with Workspace admin roles, not IAM),
checked on the installation's organization; group OWNERs and MANAGERs also manage memberships
and members may read their group.
"""

from __future__ import annotations

from typing import Any

from keycard.http.routing import Route, Router
from keycard.services import cloudidentity as ci


def register(router: Router) -> None:
    def add(method: str, template: str, handler: Any, op: str, permission: str = "", **kw: Any) -> None:
        router.add(Route(method, template, handler, op, permission, **kw))

    p = "cloudidentity.groups."
    add("GET", "/v1/groups:lookup",
        lambda app, ctx: ci.lookup_group(app.services, ctx.caller, ctx.query.get("groupKey.id")),
        p + "lookup", "cloudidentity.groups.get", query=("groupKey.id", "groupKey.namespace"),
        summary="Find a group's name by its email.")
    add("POST", "/v1/groups",
        lambda app, ctx: ci.create_group(app.services, ctx.caller, ctx.body, ctx.query.get("initialGroupConfig")),
        p + "create", "cloudidentity.groups.create", body=True, query=("initialGroupConfig",),
        summary="Create a group.")
    add("GET", "/v1/groups",
        lambda app, ctx: ci.list_groups(app.services, ctx.caller, ctx.query.get("parent"),
                                        ctx.query.get("pageSize"), ctx.query.get("pageToken", "")),
        p + "list", "cloudidentity.groups.list", query=("parent", "pageSize", "pageToken", "view"),
        summary="List the customer's groups.")
    add("GET", "/v1/groups/{group}",
        lambda app, ctx, group: ci.get_group(app.services, ctx.caller, group),
        p + "get", "cloudidentity.groups.get", summary="Get a group.")
    add("PATCH", "/v1/groups/{group}",
        lambda app, ctx, group: ci.update_group(app.services, ctx.caller, group, ctx.body,
                                                ctx.query.get("updateMask", "")),
        p + "patch", "cloudidentity.groups.update", body=True, query=("updateMask",),
        summary="Change a group's displayName or description.")
    add("DELETE", "/v1/groups/{group}",
        lambda app, ctx, group: ci.delete_group(app.services, ctx.caller, group),
        p + "delete", "cloudidentity.groups.delete", summary="Delete a group.")

    m = "cloudidentity.groups.memberships."
    add("GET", "/v1/groups/{group}/memberships:lookup",
        lambda app, ctx, group: ci.lookup_membership(app.services, ctx.caller, group, ctx.query.get("memberKey.id")),
        m + "lookup", "cloudidentity.memberships.get", query=("memberKey.id", "memberKey.namespace"),
        summary="Find a membership's name by the member's email.")
    add("POST", "/v1/groups/{group}/memberships",
        lambda app, ctx, group: ci.create_membership(app.services, ctx.caller, group, ctx.body),
        m + "create", "cloudidentity.memberships.create", body=True, summary="Add a member to a group.")
    add("GET", "/v1/groups/{group}/memberships",
        lambda app, ctx, group: ci.list_memberships(app.services, ctx.caller, group, ctx.query.get("pageSize"),
                                                    ctx.query.get("pageToken", "")),
        m + "list", "cloudidentity.memberships.list", query=("pageSize", "pageToken", "view"),
        summary="List a group's memberships.")
    add("GET", "/v1/groups/{group}/memberships/{membership}",
        lambda app, ctx, group, membership: ci.get_membership(app.services, ctx.caller, group, membership),
        m + "get", "cloudidentity.memberships.get", summary="Get a membership.")
    add("DELETE", "/v1/groups/{group}/memberships/{membership}",
        lambda app, ctx, group, membership: ci.delete_membership(app.services, ctx.caller, group, membership),
        m + "delete", "cloudidentity.memberships.delete", summary="Remove a member from a group.")
