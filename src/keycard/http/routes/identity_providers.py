"""keycard-specific REST for an organization's OIDC identity providers (human users' sign-in)."""

from __future__ import annotations

from typing import Any

from keycard.http.app import App, RequestContext
from keycard.http.routing import Route, Router
from keycard.services import identity_providers as idp

_BASE = "/v1/organizations/{org}/keycardIdentityProviders"
_ONE = _BASE + "/{provider}"


def register(router: Router) -> None:
    def add(method: str, template: str, handler: Any, verb: str, **kw: Any) -> None:
        perm = idp.PERMISSIONS["update" if verb == "patch" else verb]
        router.add(Route(method, template, handler, f"iam.organizations.keycardIdentityProviders.{verb}", perm,
                         **kw))

    def create(app: App, ctx: RequestContext, org: str) -> Any:
        body = ctx.body
        provider_id = ctx.query.get("identityProviderId")
        if provider_id is None and isinstance(body, dict):
            provider_id = body.get("identityProviderId")
            body = {k: v for k, v in body.items() if k != "identityProviderId"}
        return idp.create_provider(app.services, ctx.caller, org, provider_id, body)

    def patch(app: App, ctx: RequestContext, org: str, provider: str) -> Any:
        body = ctx.body
        mask = ctx.query.get("updateMask")
        if mask is None and isinstance(body, dict) and "updateMask" in body:
            mask = body["updateMask"]
            body = {k: v for k, v in body.items() if k != "updateMask"}
        return idp.patch_provider(app.services, ctx.caller, org, provider, body, mask)

    add("POST", _BASE, create, "create", body=True, query=("identityProviderId",),
        summary="Add an OpenID Connect identity provider whose users sign in to this organization.")
    add("GET", _BASE, lambda app, ctx, org: idp.list_providers(app.services, ctx.caller, org, ctx.query), "list",
        query=("pageSize", "pageToken"), summary="List the organization's OIDC identity providers.")
    add("GET", _ONE, lambda app, ctx, org, provider: idp.get_provider(app.services, ctx.caller, org, provider),
        "get", summary="Get an OIDC identity provider.")
    add("PATCH", _ONE, patch, "patch", body=True, query=("updateMask",),
        summary="Update an OIDC identity provider (updateMask).")
    add("DELETE", _ONE, lambda app, ctx, org, provider: idp.delete_provider(app.services, ctx.caller, org,
                                                                          provider),
        "delete", summary="Delete an OIDC identity provider; its users' ID tokens stop working at once.")
