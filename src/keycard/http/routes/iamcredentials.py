"""IAM Service Account Credentials v1 routes (paths and methods as in iamcredentials.v1.json).

IAM v1's ``signBlob`` and ``signJwt`` live at the same paths (API.md §6 #14): one route serves both,
the service telling them apart by the body (``bytesToSign`` ⇒ IAM v1).
"""

from __future__ import annotations

from typing import Any

from keycard.http.app import App, RequestContext
from keycard.http.routing import Route, Router
from keycard.services import iamcredentials as creds

_ONE = "/v1/projects/{project}/serviceAccounts/{account}"


def _issuer(app: App, ctx: RequestContext) -> str:
    return (app.base_url or str(ctx.request.base_url)).rstrip("/")


def register(router: Router) -> None:
    cache = creds.SystemKeys.new()          # per app: loaded private halves of system-managed keys

    def add(verb: str, handler: Any, permission: str, summary: str) -> None:
        router.add(Route("POST", f"{_ONE}:{verb}", handler, f"iamcredentials.projects.serviceAccounts.{verb}",
                         permission, summary=summary, body=True))

    add("generateAccessToken", lambda app, ctx, project, account: creds.generate_access_token(
        app.services, ctx.caller, app.keys(), project, account, ctx.body),
        "iam.serviceAccounts.getAccessToken", "An OAuth 2.0 access token of a service account (impersonation).")
    add("generateIdToken", lambda app, ctx, project, account: creds.generate_id_token(
        app.services, ctx.caller, app.keys(), _issuer(app, ctx), project, account, ctx.body),
        "iam.serviceAccounts.getOpenIdToken", "An OpenID Connect ID token of a service account.")
    add("signJwt", lambda app, ctx, project, account: creds.sign_jwt(
        app.services, ctx.caller, cache, project, account, ctx.body),
        "iam.serviceAccounts.signJwt", "Sign a JWT with the service account's Google-managed key (also IAM v1's "
                                       "signJwt, same path and body).")
    add("signBlob", lambda app, ctx, project, account: creds.sign_blob(
        app.services, ctx.caller, cache, project, account, ctx.body),
        "iam.serviceAccounts.signBlob", "Sign bytes with the service account's Google-managed key ({payload} → "
                                        "{keyId, signedBlob}; IAM v1's {bytesToSign} → {keyId, signature}).")
