"""IAM v1 roles and permissions routes (paths and methods as in iam.v1.json)."""

from __future__ import annotations

from typing import Any

from keycard.http.routing import Route, Router
from keycard.services import iam_roles as roles

_LIST_QUERY = ("pageSize", "pageToken", "showDeleted", "view")


def register(router: Router) -> None:
    def add(method: str, template: str, handler: Any, op: str, permission: str = "", **kw: Any) -> None:
        router.add(Route(method, template, handler, op, permission, **kw))

    # ------------------------------------------------------------------ predefined roles
    add("GET", "/v1/roles", lambda app, ctx: roles.list_roles(app.services, ctx.caller, ctx.query),
        "iam.roles.list", query=(*_LIST_QUERY, "parent"),
        summary="Predefined roles (no permission needed); with parent=, that parent's custom roles.")
    add("POST", "/v1/roles:queryGrantableRoles",
        lambda app, ctx: roles.query_grantable_roles(app.services, ctx.caller, ctx.body),
        "iam.roles.queryGrantableRoles", body=True, summary="Roles grantable on a resource.")
    add("GET", "/v1/roles/{role}",
        lambda app, ctx, role: roles.get_predefined_role(app.services, ctx.caller, role),
        "iam.roles.get", summary="A predefined role (no permission needed).")
    add("POST", "/v1/permissions:queryTestablePermissions",
        lambda app, ctx: roles.query_testable_permissions(app.services, ctx.caller, ctx.body),
        "iam.permissions.queryTestablePermissions", body=True,
        summary="Permissions that can be tested (and put in custom roles) on a resource.")

    # --------------------------------------------------------------------- custom roles
    for kind in ("projects", "organizations"):
        base = f"/v1/{kind}/{{ident}}/roles"
        add("POST", base,
            lambda app, ctx, ident, kind=kind: roles.create_role(app.services, ctx.caller, kind, ident, ctx.body),
            f"iam.{kind}.roles.create", "iam.roles.create", body=True)
        add("GET", base,
            lambda app, ctx, ident, kind=kind: roles.list_custom_roles(app.services, ctx.caller, kind, ident,
                                                                       ctx.query),
            f"iam.{kind}.roles.list", "iam.roles.list", query=_LIST_QUERY)
        add("POST", base + "/{role}:undelete",
            lambda app, ctx, ident, role, kind=kind: roles.undelete_role(app.services, ctx.caller, kind, ident,
                                                                         role, ctx.body),
            f"iam.{kind}.roles.undelete", "iam.roles.undelete", body=True)
        add("GET", base + "/{role}",
            lambda app, ctx, ident, role, kind=kind: roles.get_custom_role(app.services, ctx.caller, kind, ident,
                                                                           role),
            f"iam.{kind}.roles.get", "iam.roles.get")
        add("PATCH", base + "/{role}",
            lambda app, ctx, ident, role, kind=kind: roles.patch_role(app.services, ctx.caller, kind, ident, role,
                                                                      ctx.body, ctx.query.get("updateMask")),
            f"iam.{kind}.roles.patch", "iam.roles.update", body=True, query=("updateMask",))
        add("DELETE", base + "/{role}",
            lambda app, ctx, ident, role, kind=kind: roles.delete_role(app.services, ctx.caller, kind, ident, role,
                                                                       ctx.query.get("etag")),
            f"iam.{kind}.roles.delete", "iam.roles.delete", query=("etag",))
