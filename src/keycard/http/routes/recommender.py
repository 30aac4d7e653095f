"""Recommender v1 routes: IAM recommendations and insights of projects, folders and organizations.

Paths as in Google's discovery document: ``/v1/{projects|folders|organizations}/{id}/locations/{location}/
recommenders/google.iam.policy.Recommender/recommendations[/{id}[:markClaimed|…]]`` and
``…/insightTypes/google.iam.policy.Insight/insights[/{id}]``. See keycard.services.recommender.
Also keycard's lint of a subtree: ``GET /v1/{projects|folders|organizations}/{id}:lintIamPolicies``
(keycard.services.lint).
"""

from __future__ import annotations

from typing import Any

from keycard.http.app import App, RequestContext
from keycard.http.routing import Route, Router
from keycard.services import recommender as reco

_P = "/v1/{kind}/{ident}/locations/{location}"
_R = _P + "/recommenders/{recommender}/recommendations"
_I = _P + "/insightTypes/{insight_type}/insights"


def register(router: Router) -> None:
    def list_recos(app: App, ctx: RequestContext, kind: str, ident: str, location: str, recommender: str) -> Any:
        node = reco.resolve_node(app.services, kind, ident)
        return reco.list_recommendations(app.services, ctx.caller, node, location, recommender, ctx.query)

    def get_reco(app: App, ctx: RequestContext, kind: str, ident: str, location: str, recommender: str,
                 rid: str) -> Any:
        node = reco.resolve_node(app.services, kind, ident, "name")
        return reco.get_recommendation(app.services, ctx.caller, node, location, recommender, rid)

    def marker(verb: str) -> Any:
        def run(app: App, ctx: RequestContext, kind: str, ident: str, location: str, recommender: str,
                rid: str) -> Any:
            node = reco.resolve_node(app.services, kind, ident, "name")
            return reco.mark(app.services, ctx.caller, node, location, recommender, rid, verb, ctx.body)
        return run

    def list_ins(app: App, ctx: RequestContext, kind: str, ident: str, location: str, insight_type: str) -> Any:
        node = reco.resolve_node(app.services, kind, ident)
        return reco.list_insights(app.services, ctx.caller, node, location, insight_type, ctx.query)

    def get_ins(app: App, ctx: RequestContext, kind: str, ident: str, location: str, insight_type: str,
                iid: str) -> Any:
        node = reco.resolve_node(app.services, kind, ident, "name")
        return reco.get_insight(app.services, ctx.caller, node, location, insight_type, iid)

    def lint(app: App, ctx: RequestContext, kind: str, ident: str) -> Any:
        from keycard.services.lint import lint_node
        return lint_node(app.services, ctx.caller, reco.resolve_node(app.services, kind, ident, "name"), ctx.query)

    router.add(Route("GET", "/v1/{kind}/{ident}:lintIamPolicies", lint, "keycard.iam.lint",
                     "resourcemanager.projects.getIamPolicy", query=("minSeverity",),
                     summary="keycard's IAM lint of a project, folder or organization and everything below it "
                             "(needs that node's getIamPolicy permission)."))
    router.add(Route("GET", _R, list_recos, "recommender.recommendations.list",
                     "recommender.iamPolicyRecommendations.list", query=("filter", "pageSize", "pageToken"),
                     summary="IAM recommendations (remove or replace roles) from the access record of the last "
                             "90 days."))
    router.add(Route("GET", _R + "/{rid}", get_reco, "recommender.recommendations.get",
                     "recommender.iamPolicyRecommendations.get", summary="One IAM recommendation."))
    for verb in ("markClaimed", "markSucceeded", "markFailed", "markDismissed"):
        router.add(Route("POST", _R + "/{rid}:" + verb, marker(verb), f"recommender.recommendations.{verb}",
                         "recommender.iamPolicyRecommendations.update", body=True,
                         summary=f"Set the recommendation's state ({verb[4:].upper()}); needs its etag."))
    router.add(Route("GET", _I, list_ins, "recommender.insights.list", "recommender.iamPolicyInsights.list",
                     query=("filter", "pageSize", "pageToken"),
                     summary="Permission usage insights: permissions used vs granted per binding member."))
    router.add(Route("GET", _I + "/{iid}", get_ins, "recommender.insights.get", "recommender.iamPolicyInsights.get",
                     summary="One permission usage insight."))
