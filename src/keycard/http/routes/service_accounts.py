"""IAM v1 service accounts and keys routes (paths and methods as in iam.v1.json)."""

from __future__ import annotations

from typing import Any

from keycard.http.app import App, RequestContext
from keycard.http.routing import Route, Router
from keycard.services import iam_policy
from keycard.services import sa_keys as keys
from keycard.services import service_accounts as sa

_BASE = "/v1/projects/{project}/serviceAccounts"
_ONE = _BASE + "/{account}"


def token_uri(app: App, ctx: RequestContext) -> str:
    base = app.base_url or str(ctx.request.base_url)
    return base.rstrip("/") + "/token"


def _version(ctx: RequestContext) -> int:
    body = ctx.body if isinstance(ctx.body, dict) else {}
    options = body.get("options") if isinstance(body.get("options"), dict) else {}
    raw = ctx.query.get("options.requestedPolicyVersion") or (options or {}).get("requestedPolicyVersion")
    return iam_policy.requested_version(raw)


def register(router: Router) -> None:
    def add(method: str, template: str, handler: Any, op: str, permission: str = "", **kw: Any) -> None:
        router.add(Route(method, template, handler, f"iam.projects.serviceAccounts.{op}", permission, **kw))

    add("POST", _BASE, lambda app, ctx, project: sa.create_service_account(app.services, ctx.caller, project,
                                                                          ctx.body),
        "create", "iam.serviceAccounts.create", body=True)
    add("GET", _BASE, lambda app, ctx, project: sa.list_service_accounts(app.services, ctx.caller, project,
                                                                        ctx.query),
        "list", "iam.serviceAccounts.list", query=("pageSize", "pageToken"))
    add("GET", _ONE, lambda app, ctx, project, account: sa.get_service_account(app.services, ctx.caller, project,
                                                                              account),
        "get", "iam.serviceAccounts.get")
    add("PATCH", _ONE, lambda app, ctx, project, account: sa.patch_service_account(app.services, ctx.caller,
                                                                                  project, account, ctx.body),
        "patch", "iam.serviceAccounts.update", body=True)
    add("DELETE", _ONE, lambda app, ctx, project, account: sa.delete_service_account(app.services, ctx.caller,
                                                                                    project, account),
        "delete", "iam.serviceAccounts.delete")
    add("POST", _ONE + ":disable", lambda app, ctx, project, account: sa.set_disabled(
        app.services, ctx.caller, project, account, True), "disable", "iam.serviceAccounts.disable", body=True)
    add("POST", _ONE + ":enable", lambda app, ctx, project, account: sa.set_disabled(
        app.services, ctx.caller, project, account, False), "enable", "iam.serviceAccounts.enable", body=True)
    add("POST", _ONE + ":undelete", lambda app, ctx, project, account: sa.undelete_service_account(
        app.services, ctx.caller, project, account), "undelete", "iam.serviceAccounts.undelete", body=True)
    add("POST", _ONE + ":getIamPolicy", lambda app, ctx, project, account: sa.get_iam_policy(
        app.services, ctx.caller, project, account, _version(ctx)),
        "getIamPolicy", "iam.serviceAccounts.getIamPolicy", body=True, query=("options.requestedPolicyVersion",))
    add("POST", _ONE + ":setIamPolicy", lambda app, ctx, project, account: sa.set_iam_policy(
        app.services, ctx.caller, project, account, ctx.body,
        ctx.allow_lockout),
        "setIamPolicy", "iam.serviceAccounts.setIamPolicy", body=True)
    add("POST", _ONE + ":testIamPermissions", lambda app, ctx, project, account: sa.test_iam_permissions(
        app.services, ctx.caller, project, account, ctx.body), "testIamPermissions", body=True)

    # ------------------------------------------------------------------------------- keys
    add("POST", _ONE + "/keys", lambda app, ctx, project, account: keys.create_key(
        app.services, ctx.caller, project, account, ctx.body, token_uri=token_uri(app, ctx)),
        "keys.create", "iam.serviceAccountKeys.create", body=True)
    add("POST", _ONE + "/keys:upload", lambda app, ctx, project, account: keys.upload_key(
        app.services, ctx.caller, project, account, ctx.body), "keys.upload", "iam.serviceAccountKeys.create",
        body=True)
    add("GET", _ONE + "/keys", lambda app, ctx, project, account: keys.list_keys(
        app.services, ctx.caller, project, account, ctx.request.query_params.getlist("keyTypes")),
        "keys.list", "iam.serviceAccountKeys.list", query=("keyTypes",))
    add("GET", _ONE + "/keys/{key}", lambda app, ctx, project, account, key: keys.get_key(
        app.services, ctx.caller, project, account, key, ctx.query.get("publicKeyType", "")),
        "keys.get", "iam.serviceAccountKeys.get", query=("publicKeyType",))
    add("DELETE", _ONE + "/keys/{key}", lambda app, ctx, project, account, key: keys.delete_key(
        app.services, ctx.caller, project, account, key), "keys.delete", "iam.serviceAccountKeys.delete")
    add("POST", _ONE + "/keys/{key}:disable", lambda app, ctx, project, account, key: keys.set_key_disabled(
        app.services, ctx.caller, project, account, key, True), "keys.disable", "iam.serviceAccountKeys.disable",
        body=True)
    add("POST", _ONE + "/keys/{key}:enable", lambda app, ctx, project, account, key: keys.set_key_disabled(
        app.services, ctx.caller, project, account, key, False), "keys.enable", "iam.serviceAccountKeys.enable",
        body=True)
