"""IAM v2 deny-policy routes (paths as in iam.v2.json and the GAPIC REST transport).

The attachment point is one path segment holding ``cloudresourcemanager.googleapis.com%2Fprojects%2FP``
(discovery) or ``…%252F…`` (GAPIC); ``{attachment=**}`` also takes it with literal slashes.
"""

from __future__ import annotations

from typing import Any

from keycard.http.routing import Route, Router
from keycard.services import iam_v2

_BASE = "/v2/policies/{attachment=**}/denypolicies"


def register(router: Router) -> None:
    def add(method: str, template: str, handler: Any, op: str, permission: str = "", **kw: Any) -> None:
        router.add(Route(method, template, handler, op, permission, **kw))

    add("GET", _BASE + "/{policy}/operations/{op}",
        lambda app, ctx, attachment, policy, op: iam_v2.get_operation(app.services, ctx.caller, attachment,
                                                                      policy, op),
        "iam.policies.operations.get", "iam.denypolicies.get", summary="Get a deny-policy operation.")
    add("POST", _BASE,
        lambda app, ctx, attachment: iam_v2.create_policy(app.services, ctx.caller, attachment,
                                                          ctx.query.get("policyId"), ctx.body),
        "iam.policies.createPolicy", "iam.denypolicies.create", body=True, query=("policyId",),
        summary="Create a deny policy at an attachment point.")
    add("GET", _BASE,
        lambda app, ctx, attachment: iam_v2.list_policies(app.services, ctx.caller, attachment,
                                                          ctx.query.get("pageSize"), ctx.query.get("pageToken", "")),
        "iam.policies.listPolicies", "iam.denypolicies.list", query=("pageSize", "pageToken"),
        summary="List the deny policies at an attachment point.")
    add("GET", _BASE + "/{policy}",
        lambda app, ctx, attachment, policy: iam_v2.get_policy(app.services, ctx.caller, attachment, policy),
        "iam.policies.get", "iam.denypolicies.get", summary="Get a deny policy.")
    add("PUT", _BASE + "/{policy}",
        lambda app, ctx, attachment, policy: iam_v2.update_policy(app.services, ctx.caller, attachment, policy,
                                                                  ctx.body),
        "iam.policies.update", "iam.denypolicies.update", body=True,
        summary="Replace a deny policy (a stale etag is refused with 409 ABORTED).")
    add("DELETE", _BASE + "/{policy}",
        lambda app, ctx, attachment, policy: iam_v2.delete_policy(app.services, ctx.caller, attachment, policy,
                                                                  ctx.query.get("etag")),
        "iam.policies.delete", "iam.denypolicies.delete", query=("etag",), summary="Delete a deny policy.")
