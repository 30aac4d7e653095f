"""OAuth2 routes: the token endpoint, tokeninfo, OpenID discovery and service accounts' public certs.

All public (no bearer): the token endpoint authenticates the assertion itself, tokeninfo the token it
is given, and the rest publishes public keys as Google does.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import jwt
from starlette.responses import JSONResponse, Response

from keycard.errors import KeycardError, NotFound
from keycard.http.app import App, RequestContext
from keycard.http.routing import Route, Router
from keycard.identity import oauth
from keycard.identity.registry import Registry, ServiceAccount
from keycard.identity.tokens import AccessToken
from keycard.services.sa_keys import record_key_use

log = logging.getLogger("keycard.oauth")

_verifiers: dict[int, oauth.Verifier] = {}
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def base_url(app: App, ctx: RequestContext) -> str:
    return (app.base_url or str(ctx.request.base_url)).rstrip("/")


def _bases(app: App, ctx: RequestContext) -> tuple[str, ...]:
    return tuple(dict.fromkeys(b for b in (app.base_url.rstrip("/"), str(ctx.request.base_url).rstrip("/")) if b))


def _verifier(registry: Registry) -> oauth.Verifier:
    v = _verifiers.get(id(registry))
    if v is None or v.registry is not registry:
        v = _verifiers[id(registry)] = oauth.Verifier(registry)
    return v


def _oauth_error(e: oauth.OAuthError) -> JSONResponse:
    return JSONResponse(e.to_json(), status_code=e.status, headers=_NO_STORE)


def token(app: App, ctx: RequestContext) -> Response:
    now = app.services.clock()
    registry = app.services.runtime.identities
    try:
        grant = _verifier(registry).grant(ctx.body, now=now, audiences=oauth.token_audiences(*_bases(app, ctx)))
        body = oauth.issue(grant, app.keys(), issuer=base_url(app, ctx), now=now)
    except oauth.OAuthError as e:
        return _oauth_error(e)
    if app.authn.key_use.due(grant.key.key_id, time.monotonic()):      # at most once a minute per key
        record_key_use(app.services, grant.key.key_id, now)
    return JSONResponse(body, headers=_NO_STORE)


# ------------------------------------------------------------------------------------ tokeninfo
def _token_param(ctx: RequestContext) -> tuple[str, str]:
    params: dict[str, Any] = dict(ctx.query)
    if isinstance(ctx.body, dict):
        params.update({k: v for k, v in ctx.body.items() if k in ("access_token", "id_token")})
    for kind in ("access_token", "id_token"):
        value = params.get(kind)
        if isinstance(value, str) and value.strip():
            return kind, value.strip()
    raise oauth.OAuthError("invalid_request", "Either access_token or id_token is required.")


def _introspect(app: App, ctx: RequestContext, version: int) -> Response:
    now = app.services.clock()
    try:
        kind, value = _token_param(ctx)
        if kind == "access_token":
            try:
                at: AccessToken = app.authn.authenticate(value)
            except KeycardError:
                raise oauth.OAuthError("invalid_token", "Invalid Value: the access token is invalid, expired or "
                                       "revoked.") from None
            body = oauth.tokeninfo_v2(access=at, now=now) if version == 2 else oauth.tokeninfo_v3(access=at, now=now)
        else:
            try:
                claims = oauth.verify_id_token(value, app.keys(), issuers=_bases(app, ctx), now=now)
            except ValueError:
                raise oauth.OAuthError("invalid_token", "Invalid Value: the ID token is invalid or expired.") \
                    from None
            acct = app.services.runtime.identities.account(str(claims.get("sub", "")))
            if acct is None or not acct.usable or acct.unique_id != claims.get("sub"):
                raise oauth.OAuthError("invalid_token", "Invalid Value: the ID token's service account is "
                                       "disabled or deleted.")
            if version == 2:
                body = oauth.tokeninfo_v2(id_claims=claims, now=now)
            else:
                body = oauth.tokeninfo_v3(id_claims=claims, header=jwt.get_unverified_header(value), now=now)
    except oauth.OAuthError as e:
        return _oauth_error(e)
    return JSONResponse(body, headers=_NO_STORE)


# ------------------------------------------------------------------------------ public discovery
def _account(app: App, email: str) -> ServiceAccount:
    acct = app.services.runtime.identities.account(email)
    if acct is None or acct.deleted:
        raise NotFound(f"Service account {email} not found.", reason="ACCOUNT_NOT_FOUND")
    return acct


def register(router: Router) -> None:
    def add(method: str, template: str, handler: Any, op: str, summary: str, **kw: Any) -> None:
        router.add(Route(method, template, handler, op, public=True, summary=summary, **kw))

    add("POST", "/token", token, "oauth2.token",
        "OAuth2 token endpoint: JWT-bearer grant (RFC 7523) with a service account key.", body=True)
    add("POST", "/oauth2/v4/token", token, "oauth2.v4.token", "OAuth2 token endpoint (Google's v4 path).",
        body=True)
    add("POST", "/oauth2/v2/tokeninfo", lambda app, ctx: _introspect(app, ctx, 2), "oauth2.tokeninfo",
        "Information about an access token or ID token.", body=True, query=("access_token", "id_token"))
    add("GET", "/oauth2/v2/tokeninfo", lambda app, ctx: _introspect(app, ctx, 2), "oauth2.tokeninfo.get",
        "Information about an access token or ID token.", query=("access_token", "id_token"))
    add("GET", "/oauth2/v3/tokeninfo", lambda app, ctx: _introspect(app, ctx, 3), "oauth2.v3.tokeninfo",
        "Claims of an access token or ID token (v3 shape).", query=("access_token", "id_token"))
    add("POST", "/oauth2/v3/tokeninfo", lambda app, ctx: _introspect(app, ctx, 3), "oauth2.v3.tokeninfo.post",
        "Claims of an access token or ID token (v3 shape).", body=True, query=("access_token", "id_token"))
    add("GET", "/.well-known/openid-configuration",
        lambda app, ctx: oauth.openid_configuration(base_url(app, ctx)), "keycard.openidConfiguration",
        "OpenID Connect discovery document of this server (issuer of its ID tokens).", inline=True)
    add("GET", "/service_accounts/v1/metadata/x509/{email}",
        lambda app, ctx, email: oauth.account_certificates(app.services.runtime.identities, _account(app, email),
                                                           app.services.clock()),
        "keycard.serviceAccountCertificates", "A service account's public key certificates (kid → X.509 PEM).",
        inline=True)
    add("GET", "/service_accounts/v1/jwk/{email}",
        lambda app, ctx, email: oauth.account_jwks(app.services.runtime.identities, _account(app, email),
                                                   app.services.clock()),
        "keycard.serviceAccountJwks", "A service account's public keys as a JWKS.", inline=True)
