"""The ASGI app: route → authenticate → service → serialize, with Google's error shape.

Thin by design: a route handler parses its path, query and body, calls one service function and
returns JSON. Every KeycardError becomes Google's JSON error with its HTTP status; anything else
becomes a 500 with no traceback in the response (the log has it).
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as StarletteRoute
from starlette.types import Receive, Send

from keycard.errors import InvalidArgument, KeycardError, NotFound, Unauthenticated
from keycard.http.routing import Router
from keycard.identity.authn import Authenticator
from keycard.identity.tokens import AccessToken, KeySet
from keycard.services.common import Caller, Services
from keycard.services.sa_keys import record_key_use

__all__ = ["App", "KeycardAsgi", "RequestContext", "create_app"]

log = logging.getLogger("keycard.http")
MAX_BODY = 4 * 1024 * 1024
MAX_UPLOAD = 256 * 1024 * 1024


@dataclass(slots=True)
class RequestContext:
    request: Request
    caller: Caller
    query: Mapping[str, str]
    body: Any
    headers: Mapping[str, str]
    response_headers: dict[str, str] = field(default_factory=dict)

    @property
    def allow_lockout(self) -> bool:
        """``X-Keycard-Allow-Lockout: true``: the caller means a setIamPolicy that removes its own access."""
        return self.headers.get("x-keycard-allow-lockout", "").lower() == "true"


@dataclass(slots=True)
class App:
    services: Services
    keys: Callable[[], KeySet]
    router: Router
    registry: CollectorRegistry
    authn: Authenticator
    base_url: str = ""


def _error(e: KeycardError, domain: str) -> JSONResponse:
    headers = {}
    if isinstance(e, Unauthenticated):
        headers["WWW-Authenticate"] = 'Bearer realm="keycard", error="invalid_token"'
    return JSONResponse(e.to_json(domain), status_code=e.http_status, headers=headers)


def create_app(services: Services, keys: Callable[[], KeySet], *, base_url: str = "",
               metrics_dir: str | None = None) -> KeycardAsgi:
    """The app. ``metrics_dir``: ``keycard serve --workers``' shared metrics directory (prometheus_client's
    multiprocess mode, whose file-backed values the parent switched on before forking): /metrics then sums
    every worker's files instead of reporting this process's counts."""
    from keycard.http import routes

    router = Router()
    routes.register(router)
    registry = CollectorRegistry()
    requests_total = Counter("keycard_requests", "HTTP requests", ["method", "route", "code"], registry=registry)
    latency = Histogram("keycard_request_seconds", "Request latency", ["method", "route"], registry=registry,
                        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
    decisions = Counter("keycard_decisions", "Authorization decisions", ["outcome"], registry=registry)
    granted, denied = decisions.labels("granted"), decisions.labels("denied")
    meters_of: dict[tuple[str, str, int], tuple[Any, Any]] = {}
    authn = Authenticator(keys, services.runtime.identities, services.clock,
                          {base_url.rstrip("/")} if base_url else set())
    # a service-account key's last use (self-signed JWTs as bearers), written off the event loop
    authn.key_used = lambda kid, now: threading.Thread(target=record_key_use, args=(services, kid, now),
                                                       name="keycard-key-use", daemon=True).start()
    app_state = App(services, keys, router, registry, authn, base_url)

    async def dispatch(request: Request) -> Response:
        started = time.perf_counter()
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        path = raw_path.decode("latin-1").split("?", 1)[0]
        route, params, other_method = router.match(request.method, path)
        label = route.operation_id if route else "unmatched"
        domain = "googleapis.com"
        caller = Caller(None)
        try:
            if route is None:
                if other_method:
                    raise NotFound(f"Method {request.method} is not supported on {path}.", reason="METHOD_NOT_FOUND")
                raise NotFound(f"No API method at {request.method} {path}.", reason="METHOD_NOT_FOUND")
            domain = route.operation_id.split(".")[0] + ".googleapis.com"
            token = request.headers.get("x-keycard-revision")
            wanted = 0
            if token:
                try:
                    wanted = int(token)
                except ValueError:
                    raise InvalidArgument("Invalid X-Keycard-Revision header: expected the integer revision a write "
                                          "returned.", field="X-Keycard-Revision") from None
            # the client's token, or (keycard serve --workers) what another worker of this server committed
            wanted = services.runtime.wanted(wanted)
            if wanted:
                await run_in_threadpool(services.runtime.ensure, wanted)
            if not route.public:
                at = _authenticate(app_state, request)
                caller.principal = at.principal
                caller.claims = at.claims
                caller.extra_members = at.extra_members
            body: Any = None
            if request.method in ("POST", "PUT", "PATCH"):
                if route.raw_body:
                    body = await _read_upload(request)
                else:
                    body = _parse_body(await request.body(), request.headers.get("content-type", ""))
            ctx = RequestContext(request, caller, dict(request.query_params), body, request.headers)
            if route.inline:
                result = route.handler(app_state, ctx, **params)
                if inspect.isawaitable(result):   # an inline handler handing slow work to the threadpool
                    result = await result
            else:
                result = await run_in_threadpool(route.handler, app_state, ctx, **params)
            response: Response
            if isinstance(result, Response):
                response = result
            else:
                response = JSONResponse(result if result is not None else {})
            response.headers.update(ctx.response_headers)
            code = response.status_code
            if route.read_log and code < 400 and not route.public and caller.resource is not None \
                    and services.data_access_enabled(caller, caller.resource, domain, route.read_log):
                await run_in_threadpool(services.audit_read, caller, method=route.operation_id, service=domain,
                                        log_type=route.read_log)
        except KeycardError as e:
            response = _error(e, domain)
            code = response.status_code
        except Exception:
            log.exception("internal error on %s %s", request.method, path)
            response = JSONResponse({"error": {"code": 500, "message": "Internal error; the server log has details.",
                                               "status": "INTERNAL"}}, status_code=500)
            code = 500
        revision = caller.revision if caller.revision is not None else services.runtime.applied
        response.headers["X-Keycard-Revision"] = str(revision)
        if caller.would_deny:
            response.headers["X-Keycard-Would-Deny"] = "; ".join(caller.would_deny)[:2000]
        if caller.authorizations:       # one update per outcome (each costs ~1-2 µs, file-backed with --workers)
            n = len(caller.authorizations)
            yes = sum(1 for a in caller.authorizations if a["granted"])
            if yes:
                granted.inc(yes)
            if yes < n:
                denied.inc(n - yes)
        key = (request.method, label, code)
        meters = meters_of.get(key)
        if meters is None:      # labels() costs a few µs a call: each label set's children are looked up once
            meters = meters_of[key] = (requests_total.labels(request.method, label, str(code)),
                                       latency.labels(request.method, label))
        meters[0].inc()
        meters[1].observe(time.perf_counter() - started)
        return response

    async def metrics(request: Request) -> Response:
        if metrics_dir is None:
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
        # every worker's files, read afresh for each scrape (as prometheus_client prescribes), off the event loop
        scrape = CollectorRegistry()
        MultiProcessCollector(scrape, metrics_dir)  # type: ignore[no-untyped-call]
        return Response(await run_in_threadpool(generate_latest, scrape), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            head = await run_in_threadpool(services.runtime.store.head)
        except Exception:
            return JSONResponse({"status": "store unavailable"}, status_code=503)
        lag = head - services.runtime.applied
        return JSONResponse({"status": "ok" if lag < 1000 else "catching up", "revision": services.runtime.applied,
                             "storeRevision": head}, status_code=200 if lag < 1000 else 503)

    async def openapi(request: Request) -> Response:
        from keycard.http.openapi import build_openapi
        return JSONResponse(build_openapi(router))

    fixed = {"/metrics": metrics, "/healthz": healthz, "/readyz": readyz, "/openapi.json": openapi}
    app = Starlette(routes=[
        *(StarletteRoute(path, endpoint, methods=["GET"]) for path, endpoint in fixed.items()),
        StarletteRoute("/{path:path}", dispatch, methods=list(_API_METHODS)),
    ])
    app.state.keycard = app_state
    return KeycardAsgi(dispatch, app, frozenset(fixed))


_API_METHODS = frozenset(("GET", "POST", "PUT", "PATCH", "DELETE"))


class KeycardAsgi:
    """keycard's ASGI entry. An API request goes straight to ``dispatch`` (which matches its own routes and
    turns every error into Google's JSON), skipping Starlette's router and middleware — about 20 µs of every
    request. The fixed endpoints, other methods (405) and lifespan events go through the Starlette app."""

    __slots__ = ("_dispatch", "_fixed", "_starlette", "state")

    def __init__(self, dispatch: Callable[[Request], Awaitable[Response]], starlette: Starlette,
                 fixed: frozenset[str]) -> None:
        self._dispatch = dispatch
        self._starlette = starlette
        self._fixed = fixed
        self.state = starlette.state

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in _API_METHODS and scope["path"] not in self._fixed:
            scope["app"] = self
            response = await self._dispatch(Request(scope, receive, send))
            await response(scope, receive, send)
            return
        await self._starlette(scope, receive, send)


async def _read_upload(request: Request) -> bytes:
    """A media body, refused as soon as it passes MAX_UPLOAD (never buffered beyond it)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_UPLOAD:
        raise InvalidArgument(f"Upload of {declared} bytes is over the {MAX_UPLOAD} byte limit.", field="media")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > MAX_UPLOAD:
            raise InvalidArgument(f"Upload is over the {MAX_UPLOAD} byte limit.", field="media")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_body(raw: bytes, content_type: str) -> Any:
    """JSON bodies (every Google API); form bodies for the OAuth2 and STS token endpoints."""
    if len(raw) > MAX_BODY:
        raise InvalidArgument(f"Request body of {len(raw)} bytes is over the {MAX_BODY} byte limit.", field="body")
    if not raw.strip():
        return {}
    if content_type.split(";", 1)[0].strip().lower() == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
        except (ValueError, UnicodeDecodeError):
            raise InvalidArgument("Invalid form body.", field="body") from None
        return dict(pairs)
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"Invalid JSON payload received: {e}.", field="body") from None


def _authenticate(app: App, request: Request) -> AccessToken:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthenticated("Request is missing required authentication credential. Expected an OAuth 2 access "
                              "token: `Authorization: Bearer $(keycard auth print-access-token --user EMAIL)`.",
                              reason="CREDENTIALS_MISSING")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("Request had invalid authentication credentials. Expected 'Authorization: Bearer "
                              "TOKEN'.", reason="ACCESS_TOKEN_TYPE_UNSUPPORTED")
    return app.authn.authenticate(token.strip())
