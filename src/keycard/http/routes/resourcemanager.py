"""Cloud Resource Manager v3 routes (paths and methods as in cloudresourcemanager.v3.json)."""

from __future__ import annotations

from typing import Any

from keycard.errors import InvalidArgument
from keycard.http.app import App, RequestContext
from keycard.http.routing import Route, Router
from keycard.services import iam_policy as iam
from keycard.services import resourcemanager as crm

SVC = crm.SERVICE


def _body_version(ctx: RequestContext) -> int:
    body = ctx.body if isinstance(ctx.body, dict) else {}
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise InvalidArgument("Invalid options: expected an object.", field="options")
    return iam.requested_version(options.get("requestedPolicyVersion"))


def register(router: Router) -> None:
    def add(method: str, template: str, handler: Any, op: str, permission: str = "", **kw: Any) -> None:
        router.add(Route(method, template, handler, op, permission, **kw))

    # ------------------------------------------------------------------ organizations
    add("GET", "/v3/organizations:search",
        lambda app, ctx: crm.search_organizations(app.services, ctx.caller, ctx.query.get("query", "")),
        "cloudresourcemanager.organizations.search", "resourcemanager.organizations.get", query=("query",))
    add("GET", "/v3/organizations/{org}",
        lambda app, ctx, org: crm.get_organization(app.services, ctx.caller, org),
        "cloudresourcemanager.organizations.get", "resourcemanager.organizations.get")

    # ------------------------------------------------------------------- folders/projects
    for kind in ("organizations", "folders", "projects"):

        def resolve(app: App, ident: str, kind: str = kind) -> str:
            if kind == "projects":
                return crm.resolve_project(app.services, ident)
            return crm.full(f"{kind}/{ident}")

        def shown(ident: str, kind: str = kind) -> str:
            return crm.full(f"{kind}/{ident}")

        add("POST", f"/v3/{kind}/{{ident}}:getIamPolicy",
            lambda app, ctx, ident, kind=kind, resolve=resolve, shown=shown: iam.get_iam_policy(
                app.services, ctx.caller, resolve(app, ident), permission=f"resourcemanager.{kind}.getIamPolicy",
                service=SVC, version=_body_version(ctx), shown=shown(ident)),
            f"cloudresourcemanager.{kind}.getIamPolicy", f"resourcemanager.{kind}.getIamPolicy", body=True,
            inline=True)   # served from the runtime's mirror: no I/O
        add("POST", f"/v3/{kind}/{{ident}}:setIamPolicy",
            lambda app, ctx, ident, kind=kind, resolve=resolve, shown=shown: iam.set_iam_policy(
                app.services, ctx.caller, resolve(app, ident), ctx.body,
                permission=f"resourcemanager.{kind}.setIamPolicy", service=SVC,
                method="SetIamPolicy", allow_lockout=ctx.allow_lockout, shown=shown(ident)),
            f"cloudresourcemanager.{kind}.setIamPolicy", f"resourcemanager.{kind}.setIamPolicy", body=True)
        add("POST", f"/v3/{kind}/{{ident}}:testIamPermissions",
            lambda app, ctx, ident, resolve=resolve: iam.test_iam_permissions(
                app.services, ctx.caller, resolve(app, ident), ctx.body),
            f"cloudresourcemanager.{kind}.testIamPermissions", "", body=True, inline=True)
        if kind == "organizations":
            continue
        add("GET", f"/v3/{kind}:search",
            lambda app, ctx, kind=kind: crm.search(app.services, ctx.caller, kind, ctx.query.get("query", ""),
                                                   ctx.query.get("pageSize"), ctx.query.get("pageToken", "")),
            f"cloudresourcemanager.{kind}.search", f"resourcemanager.{kind}.get",
            query=("query", "pageSize", "pageToken"))
        add("GET", f"/v3/{kind}",
            lambda app, ctx, kind=kind: crm.list_children(
                app.services, ctx.caller, kind, ctx.query.get("parent"),
                show_deleted=ctx.query.get("showDeleted", "").lower() == "true",
                page_size=ctx.query.get("pageSize"), page_token=ctx.query.get("pageToken", "")),
            f"cloudresourcemanager.{kind}.list", f"resourcemanager.{kind}.list",
            query=("parent", "pageSize", "pageToken", "showDeleted"))
        add("POST", f"/v3/{kind}/{{ident}}:move",
            lambda app, ctx, ident, kind=kind, resolve=resolve: crm.move(
                app.services, ctx.caller, kind, resolve(app, ident), ctx.body, shown=f"{kind}/{ident}"),
            f"cloudresourcemanager.{kind}.move", f"resourcemanager.{kind}.move", body=True)
        add("POST", f"/v3/{kind}/{{ident}}:undelete",
            lambda app, ctx, ident, kind=kind, resolve=resolve: crm.undelete(
                app.services, ctx.caller, kind, resolve(app, ident), shown=f"{kind}/{ident}"),
            f"cloudresourcemanager.{kind}.undelete", f"resourcemanager.{kind}.undelete", body=True)
        add("DELETE", f"/v3/{kind}/{{ident}}",
            lambda app, ctx, ident, kind=kind, resolve=resolve: crm.delete(
                app.services, ctx.caller, kind, resolve(app, ident), shown=f"{kind}/{ident}"),
            f"cloudresourcemanager.{kind}.delete", f"resourcemanager.{kind}.delete")

    add("POST", "/v3/folders", lambda app, ctx: crm.create_folder(app.services, ctx.caller, ctx.body),
        "cloudresourcemanager.folders.create", "resourcemanager.folders.create", body=True)
    add("GET", "/v3/folders/{ident}", lambda app, ctx, ident: crm.get_folder(app.services, ctx.caller, ident),
        "cloudresourcemanager.folders.get", "resourcemanager.folders.get")
    add("PATCH", "/v3/folders/{ident}",
        lambda app, ctx, ident: crm.update_folder(app.services, ctx.caller, ident, ctx.body,
                                                  ctx.query.get("updateMask", "")),
        "cloudresourcemanager.folders.patch", "resourcemanager.folders.update", body=True, query=("updateMask",))
    add("POST", "/v3/projects", lambda app, ctx: crm.create_project(app.services, ctx.caller, ctx.body),
        "cloudresourcemanager.projects.create", "resourcemanager.projects.create", body=True)
    add("GET", "/v3/projects/{ident}", lambda app, ctx, ident: crm.get_project(app.services, ctx.caller, ident),
        "cloudresourcemanager.projects.get", "resourcemanager.projects.get")
    add("PATCH", "/v3/projects/{ident}",
        lambda app, ctx, ident: crm.update_project(app.services, ctx.caller, ident, ctx.body,
                                                   ctx.query.get("updateMask", "")),
        "cloudresourcemanager.projects.patch", "resourcemanager.projects.update", body=True, query=("updateMask",))
    add("GET", "/v3/operations/{ident}",
        lambda app, ctx, ident: crm.get_operation(app.services, ctx.caller, f"operations/{ident}"),
        "cloudresourcemanager.operations.get")
