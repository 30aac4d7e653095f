"""keycard extension: ``:keycardAddIamPolicyBinding`` / ``:keycardRemoveIamPolicyBinding`` on every resource
that has setIamPolicy — an atomic add/remove of one binding's members on the server (no client read-modify-write).

Body: ``{"binding": {"role": R, "members": [M...], "condition"?: {expression, title?, description?}},
"allConditions"?: true}`` (remove only: from every binding of R whatever its condition). Answer: the policy after
the change, in the shape the resource's getIamPolicy answers. Authorized with the resource's setIamPolicy
permission, written through its setIamPolicy (validation, ``X-Keycard-Allow-Lockout``, audit).
"""

from __future__ import annotations

from typing import Any

from keycard.http.app import App, RequestContext
from keycard.http.routing import Route, Router
from keycard.services import iam_policy as iam
from keycard.services import ml_models as models
from keycard.services import resourcemanager as crm
from keycard.services import service_accounts as sa
from keycard.services import storage as st
from keycard.services.ml_common import SERVICE as ML_SERVICE
from keycard.services.ml_common import project as ml_project

VERBS = (("keycardAddIamPolicyBinding", True), ("keycardRemoveIamPolicyBinding", False))


def _crm(kind: str, add: bool) -> Any:
    def run(app: App, ctx: RequestContext, ident: str) -> dict[str, Any]:
        resource = crm.resolve_project(app.services, ident) if kind == "projects" else crm.full(f"{kind}/{ident}")
        permission = f"resourcemanager.{kind}.setIamPolicy"
        return iam.modify_binding(
            app.services, ctx.caller, resource, ctx.body, add=add, permission=permission, service=crm.SERVICE,
            shown=crm.full(f"{kind}/{ident}"),
            write=lambda policy: iam.set_iam_policy(
                app.services, ctx.caller, resource, {"policy": policy}, permission=permission, service=crm.SERVICE,
                method="SetIamPolicy", allow_lockout=ctx.allow_lockout, shown=crm.full(f"{kind}/{ident}")))
    return run


def _service_account(add: bool) -> Any:
    def run(app: App, ctx: RequestContext, project: str, account: str) -> dict[str, Any]:
        permission = "iam.serviceAccounts.setIamPolicy"
        acct = sa.resolve(app.services, ctx.caller, project, account, permission)
        return iam.modify_binding(
            app.services, ctx.caller, acct.resource, ctx.body, add=add, permission=permission, service=sa.SERVICE,
            write=lambda policy: sa.set_iam_policy(app.services, ctx.caller, project, account, {"policy": policy},
                                                   ctx.allow_lockout))
    return run


def _ml(kind: str, add: bool) -> Any:
    def run(app: App, ctx: RequestContext, project: str, model: str) -> dict[str, Any]:
        resource = ml_project(app.services, ctx.caller, project).full(f"{kind}/{model}")
        return iam.modify_binding(
            app.services, ctx.caller, resource, ctx.body, add=add, permission=f"ml.{kind}.setIamPolicy",
            service=ML_SERVICE,
            write=lambda policy: models.set_policy(app.services, ctx.caller, project, kind, model,
                                                   {"policy": policy}, ctx.allow_lockout))
    return run


def _bucket(add: bool) -> Any:
    def run(app: App, ctx: RequestContext, bucket: str) -> dict[str, Any]:
        permission = "storage.buckets.setIamPolicy"
        st._authorize(app.services, ctx.caller, permission, bucket, st.bucket_full(bucket))  # 403 before 404
        st._get_bucket(app.services, bucket)
        return iam.modify_binding(
            app.services, ctx.caller, st.bucket_full(bucket), ctx.body, add=add, permission=permission,
            service=st.SERVICE,
            write=lambda policy: st.set_bucket_iam_policy(app.services, ctx.caller, bucket, policy,
                                                          ctx.allow_lockout))
    return run


def register(router: Router) -> None:
    for verb, add in VERBS:
        what = "Add members to" if add else "Remove members from"
        summary = (f"keycard extension: {what} one binding of the resource's allow policy, atomically on the "
                   "server (needs the resource's setIamPolicy permission).")
        for kind in ("organizations", "folders", "projects"):
            router.add(Route("POST", f"/v3/{kind}/{{ident}}:{verb}", _crm(kind, add),
                             f"cloudresourcemanager.{kind}.{verb}", f"resourcemanager.{kind}.setIamPolicy",
                             summary=summary, body=True))
        router.add(Route("POST", f"/v1/projects/{{project}}/serviceAccounts/{{account}}:{verb}", _service_account(add),
                         f"iam.projects.serviceAccounts.{verb}", "iam.serviceAccounts.setIamPolicy", summary=summary,
                         body=True))
        for kind in ("models", "jobs"):
            router.add(Route("POST", f"/v1/projects/{{project}}/{kind}/{{model}}:{verb}", _ml(kind, add),
                             f"ml.projects.{kind}.{verb}", f"ml.{kind}.setIamPolicy", summary=summary, body=True))
        router.add(Route("POST", f"/storage/v1/b/{{bucket}}/iam:{verb}", _bucket(add), f"storage.buckets.{verb}",
                         "storage.buckets.setIamPolicy", summary=summary, body=True))
