"""``keycard proxy``: an identity-aware reverse proxy (ASGI) in front of any HTTP service.

Per request: drop identity headers the client sent (``X-Goog-Authenticated-User-*``,
``X-Goog-IAP-JWT-Assertion``); take the caller's credential (``Authorization: Bearer`` or
``Proxy-Authorization: Bearer``, else the session cookie); ask keycard (:mod:`.decisions`, cached
≤ 1 s); then

* allowed → forward to the upstream (:mod:`.upstream`: kept-alive connections, both bodies streamed), with
  ``X-Goog-Authenticated-User-Email/Id`` (``accounts.keycard:``) and ``X-Goog-IAP-JWT-Assertion``;
* no credential / a bad one → a browser (``Accept: text/html``) is redirected to sign in
  (:mod:`.signin`), an API caller gets 401 with ``WWW-Authenticate``;
* denied → 403 naming the permission and the resource; the upstream never sees the request;
* keycard unreachable → 503 (fail closed).

WebSocket upgrades are decided the same way and then relayed frame by frame. ``/.keycard/healthz``
answers load balancers without asking keycard.
"""

from __future__ import annotations

import gc
import html
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from keycard.proxy.decisions import Decision, Decisions, KeycardUnavailable
from keycard.proxy.signin import (
    AUTH_COOKIE,
    AUTH_LIFETIME,
    SESSION_COOKIE,
    CookieSigner,
    Provider,
    cookie_header,
    pkce_pair,
    read_cookie,
    unverified_claims,
    without_cookies,
)
from keycard.proxy.upstream import UpstreamError, UpstreamPool

__all__ = ["ProxyApp"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("keycard.proxy")
HEALTH = "/.keycard/healthz"
_GC_YOUNG = 20_000
CALLBACK = "/.keycard/callback"
SIGN_OUT = "/.keycard/sign_out"
_IDENTITY = (b"x-goog-authenticated-user-email", b"x-goog-authenticated-user-id", b"x-goog-iap-jwt-assertion")
_HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
                  b"transfer-encoding", b"upgrade", b"host", b"content-length"})
_RESPONSE_HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"te", b"trailer",
                           b"transfer-encoding", b"upgrade"})


class ProxyApp:
    def __init__(self, decisions: Decisions, upstream: str, *, cookie_secret: bytes | None = None,
                 client_secret: str | None = None, public_url: str | None = None) -> None:
        self.decisions = decisions
        self.upstream = upstream.rstrip("/")
        self.signer = CookieSigner(cookie_secret or secrets.token_bytes(32))
        self.client_secret = client_secret
        self.public_url = public_url.rstrip("/") if public_url else None
        self.client: httpx.AsyncClient | None = None     # to the identity provider (sign-in only)
        u = urlsplit(self.upstream)
        if u.scheme != "http" or not u.hostname or u.path not in ("", "/"):
            raise ValueError(f"upstream {upstream!r}: expected http://HOST:PORT (the service beside the proxy)")
        self.pool = UpstreamPool(u.hostname, u.port or 80)
        self._providers: dict[tuple[str, str], Provider] = {}

    # ------------------------------------------------------------------------------ lifecycle
    async def startup(self) -> None:
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(10.0), follow_redirects=False)
        await self.decisions.start()
        # Everything loaded so far (modules, clients, keys) lives as long as the process: keep it out of
        # the collector's full passes, which otherwise traverse it all and stall every request in flight
        # for tens of milliseconds each time requests' short-lived objects trigger one. Requests make no
        # reference cycles (their objects go by reference counting); the few the HTTP client to keycard
        # leaves are collected every 20,000 net allocations rather than 700, as each pass that finds
        # garbage holds up the event loop for milliseconds (measured at 1,000 requests/s: p99).
        gc.collect()
        gc.freeze()
        gc.set_threshold(_GC_YOUNG, *gc.get_threshold()[1:])

    async def shutdown(self) -> None:
        await self.decisions.close()
        await self.pool.close()
        if self.client is not None:
            await self.client.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            from keycard.proxy.websocket import relay
            await relay(self, scope, receive, send)
        elif kind == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await self.startup()
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await self.shutdown()
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    # ------------------------------------------------------------------------------ decisions
    def credential(self, headers: list[tuple[bytes, bytes]]) -> tuple[str | None, bytes | None]:
        """(the caller's credential, the header it came in: b'authorization', b'proxy-authorization' or
        None for the session cookie)."""
        cookie = ""
        found: dict[bytes, str] = {}
        for k, v in headers:
            if k in (b"authorization", b"proxy-authorization"):
                found[k] = v.decode("latin-1")
            elif k == b"cookie":
                cookie = v.decode("latin-1") if not cookie else f"{cookie}; {v.decode('latin-1')}"
        for name in (b"proxy-authorization", b"authorization"):
            scheme, _, token = found.get(name, "").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip(), name
        session = self.signer.load(read_cookie(cookie, SESSION_COOKIE)) if cookie else None
        if session is not None and isinstance(session.get("t"), str):
            return str(session["t"]), None
        return None, None

    async def decide(self, scope: Scope) -> tuple[Decision | None, str | None, bytes | None]:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        cred, source = self.credential(headers)
        host = next((v.decode("latin-1") for k, v in headers if k == b"host"), "")
        client = scope.get("client")
        ip = client[0] if client else ""
        try:
            d = await self.decisions.decide(cred, host, scope["path"], scope.get("method", "GET"), ip)
        except KeycardUnavailable as e:
            log.warning("%s", e)
            return None, cred, source
        return d, cred, source

    def upstream_headers(self, headers: list[tuple[bytes, bytes]], d: Decision, source: bytes | None,
                         scope: Scope) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for k, v in headers:
            if k in _IDENTITY or k in _HOP or k == source:
                continue
            if k == b"cookie":
                kept = without_cookies(v.decode("latin-1"), (SESSION_COOKIE, AUTH_COOKIE))
                if kept:
                    out.append(("cookie", kept))
                continue
            out.append((k.decode("latin-1"), v.decode("latin-1")))
        host = next((v.decode("latin-1") for k, v in headers if k == b"host"), "")
        client = scope.get("client")
        out += [("x-goog-authenticated-user-email", f"accounts.keycard:{d.email}"),
                ("x-goog-authenticated-user-id", d.user_id),
                ("x-goog-iap-jwt-assertion", d.assertion),
                ("x-forwarded-host", host), ("x-forwarded-proto", scope.get("scheme", "http"))]
        if client:
            out.append(("x-forwarded-for", client[0]))
        return out

    # ------------------------------------------------------------------------------------ HTTP
    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path == HEALTH:
            return await _respond(send, 200, b'{"status":"ok"}', "application/json")
        if path == CALLBACK:
            return await self._callback(scope, send)
        if path == SIGN_OUT:
            return await _respond(send, 200, b"Signed out.", "text/plain", extra=[
                (b"set-cookie", cookie_header(SESSION_COOKIE, "", max_age=0, secure=self._tls(scope)))])
        if unsafe_path(scope):
            return await _error(send, scope, 400, "INVALID_ARGUMENT", "The path holds '.' or '..' segments or a "
                                "backslash; send the normalized path.")
        d, _cred, source = await self.decide(scope)
        if d is None:
            return await _error(send, scope, 503, "UNAVAILABLE", "keycard cannot be reached to decide this request; "
                                "try again shortly.")
        if d.decision == "ALLOW":
            return await self._forward(scope, receive, send, d, source)
        if d.decision == "DENY":
            return await _error(send, scope, 403, "PERMISSION_DENIED", d.message or
                                f"Permission '{d.permission}' denied on resource '{d.resource}'.")
        if _is_browser(scope) and d.sign_in:
            return await self._sign_in(scope, send, d.sign_in)
        await _error(send, scope, 401, "UNAUTHENTICATED", d.message or "Sign in or send Authorization: Bearer.",
                     extra=[(b"www-authenticate", f'Bearer realm="keycard", resource="{d.resource}"'.encode())])

    async def _forward(self, scope: Scope, receive: Receive, send: Send, d: Decision, source: bytes | None) -> None:
        headers = [(k.encode("latin-1"), v.encode("latin-1"))
                   for k, v in self.upstream_headers(scope["headers"], d, source, scope)]
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        chunked = any(k == b"transfer-encoding" for k, _ in scope["headers"])
        body = _body(receive) if chunked or (length is not None and length != b"0") else None
        started = False

        async def start(status: int, answer: list[tuple[bytes, bytes]]) -> None:
            nonlocal started
            started = True
            out = [(k, v) for k, v in answer if k.lower() not in _RESPONSE_HOP]
            await send({"type": "http.response.start", "status": status, "headers": out})

        async def part(chunk: bytes) -> None:
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})

        try:
            await self.pool.request(scope["method"], target, headers, body, None if chunked else length, start, part)
        except UpstreamError as e:
            log.warning("upstream %s: %s", self.upstream, e)
            if not started:
                return await _error(send, scope, 502, "BAD_GATEWAY", "The upstream service did not answer.")
            return                        # the answer broke off midway: the client sees the connection end
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    # --------------------------------------------------------------------------------- sign-in
    def _tls(self, scope: Scope) -> bool:
        return scope.get("scheme") in ("https", "wss") or (self.public_url or "").startswith("https://")

    def _base(self, scope: Scope) -> str:
        if self.public_url:
            return self.public_url
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "localhost")
        return f"{'https' if self._tls(scope) else 'http'}://{host}"

    def _provider(self, info: dict[str, Any]) -> Provider:
        key = (str(info.get("issuerUri")), str(info.get("clientId")))
        p = self._providers.get(key)
        if p is None:
            p = self._providers[key] = Provider(key[0], key[1], self.client_secret)
        return p

    async def _sign_in(self, scope: Scope, send: Send, info: dict[str, Any]) -> None:
        assert self.client is not None
        verifier, challenge = pkce_pair()
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        back = scope["path"] + (("?" + scope["query_string"].decode("latin-1")) if scope.get("query_string") else "")
        provider = self._provider(info)
        try:
            url = await provider.authorization_url(self.client, self._base(scope) + CALLBACK, state, nonce, challenge)
        except (httpx.HTTPError, ValueError) as e:
            log.warning("sign-in with %s unavailable: %s", provider.issuer, e)
            return await _error(send, scope, 503, "UNAVAILABLE", "The identity provider cannot be reached.")
        auth = self.signer.sign({"s": state, "v": verifier, "n": nonce, "b": back, "i": info,
                                 "exp": int(time.time()) + AUTH_LIFETIME})
        await send({"type": "http.response.start", "status": 302, "headers": [
            (b"location", url.encode()), (b"cache-control", b"no-store"), (b"content-length", b"0"),
            (b"set-cookie", cookie_header(AUTH_COOKIE, auth, max_age=AUTH_LIFETIME, secure=self._tls(scope)))]})
        await send({"type": "http.response.body", "body": b""})

    async def _callback(self, scope: Scope, send: Send) -> None:
        assert self.client is not None
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        cookie = "; ".join(v.decode("latin-1") for k, v in scope["headers"] if k == b"cookie")
        auth = self.signer.load(read_cookie(cookie, AUTH_COOKIE))
        state = (query.get("state") or [""])[0]
        if auth is None or not secrets.compare_digest(str(auth.get("s", "")), state):
            return await _error(send, scope, 400, "INVALID_ARGUMENT", "Sign-in state is missing or does not match; "
                                "start again from the page you wanted.")
        if "code" not in query:
            return await _error(send, scope, 401, "UNAUTHENTICATED", "The identity provider did not sign you in: "
                                f"{(query.get('error') or ['no code'])[0]}.")
        provider = self._provider(auth["i"])
        try:
            token = await provider.redeem(self.client, query["code"][0], str(auth["v"]), self._base(scope) + CALLBACK)
        except (httpx.HTTPError, ValueError) as e:
            return await _error(send, scope, 401, "UNAUTHENTICATED", f"Sign-in failed: {e}.")
        claims = unverified_claims(token)
        exp = claims.get("exp")
        if claims.get("nonce") != auth.get("n") or not isinstance(exp, int):
            return await _error(send, scope, 401, "UNAUTHENTICATED", "Sign-in failed: the ID token's nonce does "
                                "not match this sign-in.")
        back = str(auth.get("b") or "/")
        if not back.startswith("/") or back.startswith("//") or "\\" in back:
            back = "/"
        secure = self._tls(scope)
        session = self.signer.sign({"t": token, "exp": exp})
        await send({"type": "http.response.start", "status": 302, "headers": [
            (b"location", back.encode()), (b"cache-control", b"no-store"), (b"content-length", b"0"),
            (b"set-cookie", cookie_header(SESSION_COOKIE, session, max_age=exp - int(time.time()), secure=secure)),
            (b"set-cookie", cookie_header(AUTH_COOKIE, "", max_age=0, secure=secure))]})
        await send({"type": "http.response.body", "body": b""})


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return
        chunk = msg.get("body", b"")
        if chunk:
            yield chunk
        if not msg.get("more_body", False):
            return


def unsafe_path(scope: Scope) -> bool:
    """A path whose meaning an upstream could change after the decision: dot segments (also
    percent-encoded) or backslashes. Conditions on request.path must see what the upstream serves."""
    path: str = scope["path"]
    raw = (scope.get("raw_path") or b"").decode("latin-1").lower()
    return "\\" in path or "%5c" in raw or any(seg in (".", "..") for seg in path.split("/"))


def _is_browser(scope: Scope) -> bool:
    accept = next((v for k, v in scope["headers"] if k == b"accept"), b"")
    return scope.get("method") in ("GET", "HEAD") and b"text/html" in accept


async def _respond(send: Send, status: int, body: bytes, media: str,
                   extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", media.encode()), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store"), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _error(send: Send, scope: Scope, status: int, code: str, message: str,
                 extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """Google's JSON error for API callers; a small page for browsers. Never the upstream's answer."""
    if scope["type"] == "http" and _is_browser(scope):
        page = (f"<!doctype html><title>{status} {html.escape(code)}</title><h1>{status} "
                f"{html.escape(code.replace('_', ' ').title())}</h1><p>{html.escape(message)}</p>").encode()
        return await _respond(send, status, page, "text/html; charset=utf-8", extra)
    body = json.dumps({"error": {"code": status, "message": message, "status": code}}).encode()
    await _respond(send, status, body, "application/json", extra)

