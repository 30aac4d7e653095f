"""Workload identity federation routes: IAM v1 pools and providers (paths as in iam.v1.json) and STS v1
``POST /v1/token`` (sts.v1.json; public: the subject token is the credential)."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from keycard.http.app import App, RequestContext
from keycard.http.routing import Route, Router
from keycard.services import workload_identity as wi

_POOLS = "/v1/projects/{project}/locations/{location}/workloadIdentityPools"
_POOL = _POOLS + "/{pool}"
_PROVIDERS = _POOL + "/providers"
_PROVIDER = _PROVIDERS + "/{provider}"
_OP = "iam.projects.locations.workloadIdentityPools."


def sts_token(app: App, ctx: RequestContext) -> Any:
    try:
        result = wi.exchange_token(app.services, app.keys(), ctx.body)
    except wi.StsError as e:
        return JSONResponse(e.to_json(), status_code=400, headers={"Cache-Control": "no-store"})
    return JSONResponse(result, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


def register(router: Router) -> None:
    def add(method: str, template: str, handler: Any, op: str, permission: str = "", **kw: Any) -> None:
        router.add(Route(method, template, handler, _OP + op, permission, **kw))

    # ------------------------------------------------------------------------------- operations
    add("GET", _PROVIDER + "/operations/{op}", lambda app, ctx, project, location, pool, provider, op:
        wi.get_operation(app.services, ctx.caller, project, location, pool, provider, op),
        "providers.operations.get", "iam.workloadIdentityPoolProviders.get",
        summary="Get a workload identity pool provider operation.")
    add("GET", _POOL + "/operations/{op}", lambda app, ctx, project, location, pool, op:
        wi.get_operation(app.services, ctx.caller, project, location, pool, None, op),
        "operations.get", "iam.workloadIdentityPools.get", summary="Get a workload identity pool operation.")

    # ------------------------------------------------------------------------------------ pools
    add("POST", _POOLS, lambda app, ctx, project, location: wi.create_pool(
        app.services, ctx.caller, project, location, ctx.query.get("workloadIdentityPoolId"), ctx.body),
        "create", "iam.workloadIdentityPools.create", body=True, query=("workloadIdentityPoolId",),
        summary="Create a workload identity pool (a done Operation).")
    add("GET", _POOLS, lambda app, ctx, project, location: wi.list_pools(
        app.services, ctx.caller, project, location, ctx.query),
        "list", "iam.workloadIdentityPools.list", query=("pageSize", "pageToken", "showDeleted"),
        summary="List workload identity pools.")
    add("GET", _POOL, lambda app, ctx, project, location, pool: wi.get_pool(
        app.services, ctx.caller, project, location, pool), "get", "iam.workloadIdentityPools.get",
        summary="Get a workload identity pool.")
    add("PATCH", _POOL, lambda app, ctx, project, location, pool: wi.patch_pool(
        app.services, ctx.caller, project, location, pool, ctx.query, ctx.body),
        "patch", "iam.workloadIdentityPools.update", body=True, query=("updateMask",),
        summary="Update a workload identity pool (displayName, description, disabled).")
    add("DELETE", _POOL, lambda app, ctx, project, location, pool: wi.delete_pool(
        app.services, ctx.caller, project, location, pool), "delete", "iam.workloadIdentityPools.delete",
        summary="Soft-delete a workload identity pool (undeletable for 30 days).")
    add("POST", _POOL + ":undelete", lambda app, ctx, project, location, pool: wi.undelete_pool(
        app.services, ctx.caller, project, location, pool), "undelete", "iam.workloadIdentityPools.undelete",
        body=True, summary="Undelete a workload identity pool deleted less than 30 days ago.")

    # -------------------------------------------------------------------------------- providers
    add("POST", _PROVIDERS, lambda app, ctx, project, location, pool: wi.create_provider(
        app.services, ctx.caller, project, location, pool, ctx.query.get("workloadIdentityPoolProviderId"),
        ctx.body), "providers.create", "iam.workloadIdentityPoolProviders.create", body=True,
        query=("workloadIdentityPoolProviderId",), summary="Create an OIDC workload identity pool provider.")
    add("GET", _PROVIDERS, lambda app, ctx, project, location, pool: wi.list_providers(
        app.services, ctx.caller, project, location, pool, ctx.query),
        "providers.list", "iam.workloadIdentityPoolProviders.list", query=("pageSize", "pageToken", "showDeleted"),
        summary="List a pool's providers.")
    add("GET", _PROVIDER, lambda app, ctx, project, location, pool, provider: wi.get_provider(
        app.services, ctx.caller, project, location, pool, provider),
        "providers.get", "iam.workloadIdentityPoolProviders.get", summary="Get a provider.")
    add("PATCH", _PROVIDER, lambda app, ctx, project, location, pool, provider: wi.patch_provider(
        app.services, ctx.caller, project, location, pool, provider, ctx.query, ctx.body),
        "providers.patch", "iam.workloadIdentityPoolProviders.update", body=True, query=("updateMask",),
        summary="Update a provider.")
    add("DELETE", _PROVIDER, lambda app, ctx, project, location, pool, provider: wi.delete_provider(
        app.services, ctx.caller, project, location, pool, provider),
        "providers.delete", "iam.workloadIdentityPoolProviders.delete",
        summary="Soft-delete a provider (undeletable for 30 days).")
    add("POST", _PROVIDER + ":undelete", lambda app, ctx, project, location, pool, provider: wi.undelete_provider(
        app.services, ctx.caller, project, location, pool, provider),
        "providers.undelete", "iam.workloadIdentityPoolProviders.undelete", body=True,
        summary="Undelete a provider deleted less than 30 days ago.")

    # -------------------------------------------------------------------------------------- STS
    router.add(Route("POST", "/v1/token", sts_token, "sts.token", body=True, public=True,
                     summary="STS v1 token exchange (RFC 8693): an external OIDC token for a federated access "
                             "token. Form (snake_case) or JSON (camelCase) bodies."))
