"""``keycard metadata-server``: a GCE-style metadata server for one attached service account.

Unmodified google-auth (``compute_engine.Credentials``, ``google.auth.default()``,
``compute_engine.IDTokenCredentials(use_metadata_identity_endpoint=True)``) finds it through
``GCE_METADATA_HOST`` / ``GCE_METADATA_IP`` and gets keycard tokens of the account from it.

At start the process attaches itself to the account (``POST …/serviceAccounts/EMAIL/
keycardAttachments`` with its operator's credentials, which needs ``iam.serviceAccounts.actAs``:
without it the start fails with keycard's 403, which prints the grant command). From then on it
authenticates to keycard with the attachment's secret only, and on a clean shutdown it deletes the
attachment with that secret (the operator's token may have expired meanwhile). Deleting the
attachment elsewhere stops it at once: the next token request fails, and tokens it handed out
stop working at their next API call.

Served (``Metadata-Flavor: Google`` required on every request, requests with ``X-Forwarded-For``
refused, as on GCE; every response carries ``Metadata-Flavor: Google``):

    GET /                                                          ping
    GET /computeMetadata/v1/project/project-id                     text
    GET /computeMetadata/v1/project/numeric-project-id             text (404 if unknown)
    GET /computeMetadata/v1/universe/universe-domain               text
    GET /computeMetadata/v1/instance/service-accounts/[?recursive=true]
    GET /computeMetadata/v1/instance/service-accounts/{default|EMAIL}/[?recursive=true]   JSON {aliases, email, scopes}
    GET …/{default|EMAIL}/email | aliases | scopes                 text
    GET …/{default|EMAIL}/token[?scopes=a,b]                       JSON {access_token, expires_in, token_type}
    GET …/{default|EMAIL}/identity?audience=A[&format=full]        text JWT

Tokens are cached per scope set (ID tokens per audience and format) until five minutes before
they expire; a cached token is handed out only after keycard confirms the attachment is live.
"""

from __future__ import annotations

import calendar
import ipaddress
import json
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keycard.errors import KeycardError

__all__ = ["DEFAULT_SCOPES", "Attachment", "MetadataServer", "Upstream", "UpstreamError", "attach",
           "bearer_from_key_file", "run_metadata_server"]

DEFAULT_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
REFRESH_MARGIN = 300                   # seconds before expiry when a cached token is replaced
_FLAVOR = {"Metadata-Flavor": "Google", "Server": "Metadata Server for VM"}
_TEXT = "application/text"
_V1 = "/computeMetadata/v1/"


# ------------------------------------------------------------------------------ keycard client

class UpstreamError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Upstream:
    """JSON over HTTP to the keycard server (stdlib only)."""

    def __init__(self, endpoint: str, timeout: float = 10.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout

    def call(self, method: str, path: str, body: Mapping[str, Any] | None = None, *, bearer: str | None = None
             ) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        req = urllib.request.Request(self.endpoint + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raise UpstreamError(e.code, _error_message(e.read(), e.code)) from None
        except (urllib.error.URLError, OSError) as e:
            raise UpstreamError(503, f"keycard server {self.endpoint} unreachable: {e}") from None
        try:
            return json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError:
            raise UpstreamError(502, f"keycard server {self.endpoint} sent a non-JSON answer") from None


def _error_message(raw: bytes, status: int) -> str:
    try:
        err = json.loads(raw).get("error", {})
        return str(err.get("message") or err) if isinstance(err, Mapping) else str(err)
    except (json.JSONDecodeError, AttributeError):
        return f"HTTP {status}: {raw[:200].decode(errors='replace')}"


def bearer_from_key_file(path: Path, *, now: float | None = None) -> str:
    """A self-signed JWT of the service account whose key file this is (keycard accepts it as a bearer,
    as Google does for GAPIC clients), valid one hour."""
    import jwt
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise KeycardError(f"Cannot read --credentials {path}: {e}. Pass a service-account key file (JSON).") from None
    if not isinstance(info, dict) or info.get("type") != "service_account" or not all(
            isinstance(info.get(k), str) for k in ("client_email", "private_key", "private_key_id")):
        raise KeycardError(f"Invalid --credentials {path}: expected a service-account key file with client_email, "
                           "private_key and private_key_id.")
    iat = int(now if now is not None else time.time())
    claims = {"iss": info["client_email"], "sub": info["client_email"], "aud": "https://iam.googleapis.com/",
              "iat": iat, "exp": iat + 3600}
    try:
        return jwt.encode(claims, info["private_key"], algorithm="RS256",
                          headers={"kid": info["private_key_id"], "typ": "JWT"})
    except (ValueError, TypeError, jwt.PyJWTError) as e:
        raise KeycardError(f"Invalid --credentials {path}: cannot sign with its private_key ({e}).") from None


# --------------------------------------------------------------------------------- attachment

@dataclass(frozen=True, slots=True)
class Attachment:
    id: str
    name: str
    email: str
    unique_id: str
    secret: str
    project_id: str
    project_number: str


def attach(upstream: Upstream, email: str, bearer: str, *, display_name: str = "") -> Attachment:
    body = {"displayName": display_name[:100]} if display_name else {}
    try:
        out = upstream.call("POST", f"/v1/projects/-/serviceAccounts/{quote(email, safe='@')}/keycardAttachments",
                            body, bearer=bearer)
    except UpstreamError as e:
        raise KeycardError(f"Cannot attach to service account {email} (HTTP {e.status}): {e.message}") from None
    try:
        return Attachment(str(out["name"]).rsplit("/", 1)[1], str(out["name"]), str(out["serviceAccount"]),
                          str(out["uniqueId"]), str(out["secret"]), str(out.get("projectId", "")),
                          str(out.get("projectNumber", "")))
    except (KeyError, IndexError, TypeError):
        raise KeycardError("The keycard server answered the attachment request without a secret; is "
                           f"{upstream.endpoint} a keycard server?") from None


def project_number(upstream: Upstream, project: str, bearer: str) -> str:
    """The number of ``project`` if the operator may read it; empty otherwise."""
    try:
        out = upstream.call("GET", f"/v3/projects/{quote(project, safe='')}", bearer=bearer)
    except UpstreamError:
        return ""
    name = str(out.get("name", "")) if isinstance(out, Mapping) else ""
    return name.split("/", 1)[1] if name.startswith("projects/") else ""


# ---------------------------------------------------------------------------- the server

class MetadataServer:
    def __init__(self, upstream: Upstream, attachment: Attachment, *, project_id: str, project_number: str,
                 scopes: Sequence[str] = DEFAULT_SCOPES, universe_domain: str = "googleapis.com",
                 clock: Callable[[], float] = time.time) -> None:
        self.upstream = upstream
        self.attachment = attachment
        self.project_id = project_id
        self.project_number = project_number
        self.scopes = list(scopes)
        self.universe_domain = universe_domain
        self.clock = clock
        self._lock = threading.Lock()
        self._access: dict[tuple[str, ...], tuple[str, float]] = {}
        self._id: dict[tuple[str, str], tuple[str, float]] = {}

    # ---------------------------------------------------------------------------- tokens
    def _own(self, verb: str, body: Mapping[str, Any]) -> Any:
        return self.upstream.call("POST", f"/v1/keycardAttachments/{self.attachment.id}:{verb}",
                                  {"secret": self.attachment.secret, **body})

    def access_token(self, scopes: Sequence[str]) -> tuple[str, int]:
        key = tuple(sorted(set(scopes)))
        with self._lock:
            now = self.clock()
            hit = self._access.get(key)
            if hit is not None and hit[1] - now > REFRESH_MARGIN:
                self._own("check", {})
                return hit[0], int(hit[1] - now)
            out = self._own("generateAccessToken", {"scope": list(key)})
            token, exp = str(out["accessToken"]), float(calendar.timegm(time.strptime(out["expireTime"],
                                                                                       "%Y-%m-%dT%H:%M:%SZ")))
            self._access[key] = (token, exp)
            return token, int(exp - now)

    def id_token(self, audience: str, fmt: str) -> str:
        import jwt
        key = (audience, fmt)
        with self._lock:
            now = self.clock()
            hit = self._id.get(key)
            if hit is not None and hit[1] - now > REFRESH_MARGIN:
                self._own("check", {})
                return hit[0]
            token = str(self._own("generateIdToken", {"audience": audience, "format": fmt})["token"])
            exp = float(jwt.decode(token, options={"verify_signature": False}).get("exp", now))
            if len(self._id) >= 1000:          # audiences are the caller's choice: bound the cache
                self._id.clear()
            self._id[key] = (token, exp)
            return token

    def detach(self) -> None:
        self._own("detach", {})

    # ------------------------------------------------------------------------------- HTTP
    def _info(self) -> dict[str, Any]:
        return {"aliases": ["default"], "email": self.attachment.email, "scopes": self.scopes}

    def _account(self, alias: str) -> bool:
        return alias == "default" or alias.lower() == self.attachment.email.lower()

    def handle(self, method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str]) -> Response:
        if headers.get("metadata-flavor") != "Google":
            return _text("Missing Metadata-Flavor:Google header.", 403, "text/html")
        if "x-forwarded-for" in headers:
            return _text("Requests with an X-Forwarded-For header are refused: the metadata server answers only "
                         "clients that reach it directly.", 403, "text/html")
        if path == "/":
            return _text("computeMetadata/\n")
        if not path.startswith(_V1):
            return _not_found()
        rest = path[len(_V1):]
        recursive = query.get("recursive", "").lower() in ("true", "1")
        parts = rest.rstrip("/").split("/")
        is_token = len(parts) == 4 and parts[:2] == ["instance", "service-accounts"] and parts[3] in ("token",
                                                                                                    "identity")
        if method != "GET" and not is_token:
            return _text("Method not allowed.", 405, "text/html")
        if rest == "project/project-id":
            return _text(self.project_id)
        if rest == "project/numeric-project-id":
            return _text(self.project_number) if self.project_number else _not_found()
        if rest.rstrip("/") == "project" and recursive:
            info: dict[str, Any] = {"projectId": self.project_id}
            if self.project_number:
                info["numericProjectId"] = int(self.project_number)
            return _json(info)
        if rest == "universe/universe-domain":
            return _text(self.universe_domain)
        if parts[:2] != ["instance", "service-accounts"]:
            return _not_found()
        if len(parts) == 2:
            if recursive:
                return _json({"default": self._info(), self.attachment.email: self._info()})
            return _text(f"default/\n{self.attachment.email}/\n")
        if not self._account(parts[2]):
            return _not_found()
        if len(parts) == 3:
            return _json(self._info()) if recursive else _text("aliases\nemail\nidentity\nscopes\ntoken\n")
        if len(parts) != 4:
            return _not_found()
        leaf = parts[3]
        if leaf == "email":
            return _text(self.attachment.email)
        if leaf == "aliases":
            return _text("default\n")
        if leaf == "scopes":
            return _text("".join(s + "\n" for s in self.scopes))
        if leaf == "token":
            wanted = [s for s in query.get("scopes", "").replace(" ", ",").split(",") if s] or self.scopes
            try:
                token, expires_in = self.access_token(wanted)
            except UpstreamError as e:
                return _upstream_failure(e)
            return _json({"access_token": token, "expires_in": expires_in, "token_type": "Bearer"})
        if leaf == "identity":
            audience = query.get("audience", "")
            fmt = query.get("format", "standard") or "standard"
            if not audience:
                return _text("non-empty audience parameter required", 400, "text/html")
            if fmt not in ("standard", "full"):
                return _text(f"invalid format {fmt!r}: use standard or full", 400, "text/html")
            try:
                return _text(self.id_token(audience, fmt))
            except UpstreamError as e:
                return _upstream_failure(e)
        return _not_found()

    def app(self) -> Starlette:
        def endpoint(request: Request) -> Response:      # sync: Starlette runs it in its thread pool
            return self.handle(request.method, request.url.path, request.query_params, request.headers)

        return Starlette(routes=[Route("/{path:path}", endpoint, methods=["GET", "POST", "PUT", "DELETE",
                                                                           "PATCH"])])


def _text(body: str, status: int = 200, media_type: str = _TEXT) -> Response:
    return Response(body, status_code=status, media_type=media_type, headers=_FLAVOR)


def _json(data: Any) -> Response:
    return Response(json.dumps(data), media_type="application/json", headers=_FLAVOR)


def _not_found() -> Response:
    return _text("Not Found", 404, "text/html")


def _upstream_failure(e: UpstreamError) -> Response:
    """keycard refused (attachment deleted, account disabled…): 400 stays 400, other refusals are 403;
    keycard unreachable or failing: 503 (google-auth retries those)."""
    status = 400 if e.status == 400 else 403 if 400 < e.status < 500 else 503
    return _text(f"keycard: {e.message}", status, "text/html")


# -------------------------------------------------------------------------------------- CLI

def run_metadata_server(*, service_account: str, endpoint: str, host: str, port: int, project: str | None,
                        token: str | None, credentials: Path | None, scopes: Sequence[str],
                        universe_domain: str, log: Callable[[str], None]) -> None:
    """Attach, serve until SIGINT/SIGTERM, detach."""
    import socket

    import uvicorn
    if not endpoint.startswith(("http://", "https://")):
        raise KeycardError(f"Invalid --endpoint {endpoint!r}: the keycard server's URL, e.g. http://127.0.0.1:8080.")
    if not 0 < port < 65536:
        raise KeycardError(f"Invalid --port {port}: a port number (1-65535).")
    if credentials is not None:
        bearer = bearer_from_key_file(credentials)
    elif token:
        bearer = token.strip()
    else:
        raise KeycardError("No credentials to attach with: pass --token (or set KEYCARD_TOKEN) to a keycard token, "
                           "e.g. $(keycard auth print-access-token --user you@example.com), or --credentials "
                           "KEYFILE. The caller needs roles/iam.serviceAccountUser on the account.")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        log(f"WARNING: --host {host} is not a loopback address: anyone who can reach it gets tokens of "
            f"{service_account}.")
    with socket.socket() as probe:      # fail before attaching if the port is taken
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise KeycardError(f"Cannot listen on {host}:{port}: {e}. Pick another --port.") from None
    upstream = Upstream(endpoint)
    att = attach(upstream, service_account, bearer, display_name=f"keycard metadata-server {host}:{port}")
    pid = project or att.project_id
    number = att.project_number if pid == att.project_id else project_number(upstream, pid, bearer)
    server = MetadataServer(upstream, att, project_id=pid, project_number=number,
                            scopes=list(scopes) or list(DEFAULT_SCOPES), universe_domain=universe_domain)
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    log(f"keycard metadata server for {att.email} on http://{hostport} (attachment {att.name}, project {pid})\n"
        f"Point google-auth at it:  export GCE_METADATA_HOST={hostport} GCE_METADATA_IP={hostport}")
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler that was
    # there before it: let that handler be a no-op so the attachment is deleted before the process exits.
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: None)
    try:
        config = uvicorn.Config(server.app(), host=host, port=port, log_level="warning", access_log=False)
        uvicorn.Server(config).run()
    finally:
        try:
            server.detach()
            log(f"Detached {att.name}.")
        except UpstreamError as e:
            log(f"WARNING: could not delete attachment {att.name} ({e.message}); delete it with DELETE "
                f"{endpoint.rstrip('/')}/v1/{att.name}")
        sys.stderr.flush()
