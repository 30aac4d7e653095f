"""Cloud Asset API v1 routes: analyzeIamPolicy, searchAllIamPolicies, searchAllResources, exportAssets and
its operations (keycard.services.cloudasset, keycard.services.cloudasset_export)."""

from __future__ import annotations

from typing import Any

from keycard.http.app import App, RequestContext
from keycard.http.routing import Route, Router
from keycard.services import cloudasset, cloudasset_export


def _lists(ctx: RequestContext) -> dict[str, list[str]]:
    params = ctx.request.query_params
    return {k: params.getlist(k) for k in params if len(params.getlist(k)) > 1 or k.endswith(("roles",
                                                                                               "permissions",
                                                                                               "assetTypes"))}


def register(router: Router) -> None:
    def analyze(app: App, ctx: RequestContext, kind: str, scope: str) -> dict[str, Any]:
        return cloudasset.analyze_iam_policy(app.services, ctx.caller, f"{kind}/{scope}", ctx.query, _lists(ctx))

    def search_policies(app: App, ctx: RequestContext, kind: str, scope: str) -> dict[str, Any]:
        return cloudasset.search_all_iam_policies(app.services, ctx.caller, f"{kind}/{scope}", ctx.query,
                                                  _lists(ctx))

    def search_resources(app: App, ctx: RequestContext, kind: str, scope: str) -> dict[str, Any]:
        return cloudasset.search_all_resources(app.services, ctx.caller, f"{kind}/{scope}", ctx.query, _lists(ctx))

    def export(app: App, ctx: RequestContext, kind: str, scope: str) -> dict[str, Any]:
        return cloudasset_export.export_assets(app.services, ctx.caller, f"{kind}/{scope}", ctx.body)

    def operation(app: App, ctx: RequestContext, kind: str, scope: str, opkind: str, opid: str) -> dict[str, Any]:
        return cloudasset_export.get_operation(app.services, ctx.caller, f"{kind}/{scope}", opkind, opid)

    router.add(Route("GET", "/v1/{kind}/{scope}:analyzeIamPolicy", analyze, "cloudasset.analyzeIamPolicy",
                     "cloudasset.assets.analyzeIamPolicy", read_log="DATA_READ",
                     summary="Who has which access to what inside the scope: groups expanded, conditions "
                             "evaluated, service-account impersonation followed."))
    router.add(Route("GET", "/v1/{kind}/{scope}:searchAllIamPolicies", search_policies,
                     "cloudasset.searchAllIamPolicies", "cloudasset.assets.searchAllIamPolicies",
                     read_log="DATA_READ", summary="Allow policies inside the scope matching a query "
                                                   "(policy:MEMBER, policy:ROLE, policy.role.permissions:P …)."))
    router.add(Route("GET", "/v1/{kind}/{scope}:searchAllResources", search_resources,
                     "cloudasset.searchAllResources", "cloudasset.assets.searchAllResources",
                     read_log="DATA_READ", summary="Resources inside the scope matching a query (name:, "
                                                   "displayName:, project:, labels.K:, state: …)."))
    router.add(Route("POST", "/v1/{kind}/{scope}:exportAssets", export, "cloudasset.exportAssets",
                     "cloudasset.assets.exportResource", body=True,
                     summary="Export the scope's resources or allow policies to gs://BUCKET/OBJECT as "
                             "newline-delimited JSON (exportIamPolicy for IAM_POLICY)."))
    router.add(Route("GET", "/v1/{kind}/{scope}/operations/{opkind}/{opid}", operation, "cloudasset.operations.get",
                     "cloudasset.assets.exportResource",
                     summary="An export's long-running operation."))
