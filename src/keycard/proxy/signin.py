"""Browser sign-in at the proxy: the organization's OIDC provider, authorization code + PKCE, session cookies.

A browser without a session is sent to the provider's ``authorization_endpoint`` (from its
``/.well-known/openid-configuration``) with ``code_challenge`` (S256), ``state`` and ``nonce``; those
and the page it wanted travel in a short-lived signed cookie. The callback ``/.keycard/callback``
checks the state, redeems the code with the verifier at the ``token_endpoint`` and keeps the ID
token in the session cookie: signed (HMAC-SHA256 with the proxy's secret), ``HttpOnly``,
``SameSite=Lax``, ``Secure`` when the proxy serves TLS, expiring when the ID token does. keycard
verifies the ID token itself at every decision (issuer, audience, signature, expiry, mapping), so
the cookie only carries it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx

__all__ = ["AUTH_COOKIE", "SESSION_COOKIE", "CookieSigner", "Provider", "pkce_pair"]

SESSION_COOKIE = "__keycard_session"
AUTH_COOKIE = "__keycard_auth"
AUTH_LIFETIME = 600


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge) per RFC 7636."""
    verifier = _b64(secrets.token_bytes(32))
    return verifier, _b64(hashlib.sha256(verifier.encode()).digest())


@dataclass(frozen=True, slots=True)
class CookieSigner:
    secret: bytes

    def sign(self, payload: dict[str, Any]) -> str:
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        mac = _b64(hmac.new(self.secret, body.encode(), hashlib.sha256).digest())
        return f"{body}.{mac}"

    def load(self, value: str | None) -> dict[str, Any] | None:
        """The payload of a cookie this proxy signed and that has not expired (``exp``), else None."""
        if not value or value.count(".") != 1:
            return None
        body, mac = value.split(".")
        want = _b64(hmac.new(self.secret, body.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(want, mac):
            return None
        try:
            payload = json.loads(_unb64(body))
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(payload, dict) or not isinstance(payload.get("exp"), int | float) \
                or payload["exp"] <= time.time():
            return None
        return payload


def cookie_header(name: str, value: str, *, max_age: int, secure: bool) -> bytes:
    parts = [f"{name}={value}", "Path=/", f"Max-Age={max(0, max_age)}", "HttpOnly", "SameSite=Lax"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts).encode()


def read_cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        k, _, v = part.strip().partition("=")
        if k == name:
            return v
    return None


def without_cookies(header: str, drop: tuple[str, ...]) -> str:
    """The Cookie header minus the proxy's own cookies (the upstream never sees the ID token)."""
    return "; ".join(p.strip() for p in header.split(";") if p.strip() and p.strip().partition("=")[0] not in drop)


@dataclass(slots=True)
class Provider:
    """One OIDC provider as the proxy uses it (learned from keycard's answer, discovery cached)."""

    issuer: str
    client_id: str
    client_secret: str | None = None
    _meta: dict[str, Any] = field(default_factory=dict)
    _fetched: float = 0.0

    async def metadata(self, client: httpx.AsyncClient) -> dict[str, Any]:
        if not self._meta or time.monotonic() - self._fetched > 3600:
            r = await client.get(self.issuer.rstrip("/") + "/.well-known/openid-configuration", timeout=10)
            r.raise_for_status()
            meta = r.json()
            if not isinstance(meta, dict) or not all(isinstance(meta.get(k), str) for k in
                                                     ("authorization_endpoint", "token_endpoint")):
                raise ValueError(f"{self.issuer}: discovery lacks authorization_endpoint or token_endpoint")
            self._meta, self._fetched = meta, time.monotonic()
        return self._meta

    async def authorization_url(self, client: httpx.AsyncClient, redirect_uri: str, state: str, nonce: str,
                                challenge: str) -> str:
        meta = await self.metadata(client)
        query = urlencode({"response_type": "code", "client_id": self.client_id, "redirect_uri": redirect_uri,
                           "scope": "openid email profile", "state": state, "nonce": nonce,
                           "code_challenge": challenge, "code_challenge_method": "S256"})
        sep = "&" if "?" in meta["authorization_endpoint"] else "?"
        return f"{meta['authorization_endpoint']}{sep}{query}"

    async def redeem(self, client: httpx.AsyncClient, code: str, verifier: str, redirect_uri: str) -> str:
        """The ID token for an authorization code (the verifier proves this proxy started the flow)."""
        meta = await self.metadata(client)
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                "client_id": self.client_id, "code_verifier": verifier}
        if self.client_secret:
            form["client_secret"] = self.client_secret
        r = await client.post(meta["token_endpoint"], data=form, timeout=10)
        if r.status_code != 200:
            raise ValueError(f"the identity provider refused the code ({r.status_code}): {r.text[:200]}")
        token = r.json().get("id_token")
        if not isinstance(token, str):
            raise ValueError("the identity provider's token response has no id_token")
        return token


def unverified_claims(token: str) -> dict[str, Any]:
    """Claims of a JWT received straight from the provider's token endpoint (keycard verifies it)."""
    try:
        claims = json.loads(_unb64(token.split(".")[1]))
    except (ValueError, IndexError, UnicodeDecodeError):
        return {}
    return claims if isinstance(claims, dict) else {}
