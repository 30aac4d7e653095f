"""Metadata-server attachments (keycard's own API; see keycard.services.attachments)."""

from __future__ import annotations

from typing import Any

from keycard.http.app import App, RequestContext
from keycard.http.routing import Route, Router
from keycard.services import attachments as att

_BASE = "/v1/projects/{project}/serviceAccounts/{account}/keycardAttachments"
_OWN = "/v1/keycardAttachments/{attachment}"


def _issuer(app: App, ctx: RequestContext) -> str:
    return (app.base_url or str(ctx.request.base_url)).rstrip("/")


def register(router: Router) -> None:
    def add(method: str, template: str, handler: Any, op: str, permission: str = "", **kw: Any) -> None:
        router.add(Route(method, template, handler, op, permission, **kw))

    add("POST", _BASE, lambda app, ctx, project, account: att.create_attachment(
        app.services, ctx.caller, project, account, ctx.body),
        "iam.projects.serviceAccounts.keycardAttachments.create", "iam.serviceAccounts.actAs", body=True,
        summary="Attach a metadata server to the account (returns its secret once).")
    add("GET", _BASE, lambda app, ctx, project, account: att.list_attachments(
        app.services, ctx.caller, project, account),
        "iam.projects.serviceAccounts.keycardAttachments.list", "iam.serviceAccounts.get",
        summary="The account's metadata-server attachments (no secrets).")
    add("DELETE", _BASE + "/{attachment}", lambda app, ctx, project, account, attachment: att.delete_attachment(
        app.services, ctx.caller, project, account, attachment),
        "iam.projects.serviceAccounts.keycardAttachments.delete", "iam.serviceAccounts.actAs",
        summary="Revoke an attachment (actAs or iam.serviceAccounts.update on the account); its tokens stop "
                "working at once.")
    # authenticated by the attachment's secret in the body, not by a bearer token
    add("POST", _OWN + ":generateAccessToken", lambda app, ctx, attachment: att.generate_access_token(
        app.services, app.keys(), attachment, ctx.body),
        "iam.keycardAttachments.generateAccessToken", body=True, public=True,
        summary="An access token of the attached account, for the attachment's secret.")
    add("POST", _OWN + ":generateIdToken", lambda app, ctx, attachment: att.generate_id_token(
        app.services, app.keys(), attachment, ctx.body, issuer=_issuer(app, ctx)),
        "iam.keycardAttachments.generateIdToken", body=True, public=True,
        summary="An OpenID Connect ID token of the attached account, for the attachment's secret.")
    add("POST", _OWN + ":check", lambda app, ctx, attachment: att.check(app.services, attachment, ctx.body),
        "iam.keycardAttachments.check", body=True, public=True,
        summary="Whether the attachment is still live, for its secret.")
    add("POST", _OWN + ":detach", lambda app, ctx, attachment: att.detach(app.services, attachment, ctx.body),
        "iam.keycardAttachments.detach", body=True, public=True,
        summary="The holder of the secret revokes its own attachment.")
