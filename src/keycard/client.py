"""A small typed HTTP client for a keycard server: what every remote ``keycard`` command uses.

Where the server is (first that is set):
  ``--endpoint`` · ``KEYCARD_ENDPOINT`` · ``endpoint`` in the config file (``keycard config set endpoint URL``).

Who calls (first that is set):
  1. ``--access-token`` · ``KEYCARD_ACCESS_TOKEN``: a bearer token as is;
  2. ``--key-file`` · ``GOOGLE_APPLICATION_CREDENTIALS`` · config ``key_file``: a service-account key file
     (google-auth's ``service_account.Credentials``; keycard's key files carry keycard's ``token_uri``);
  3. the metadata server (google-auth ``compute_engine.Credentials``) when ``GCE_METADATA_HOST`` is set;
  4. ``--user`` · ``KEYCARD_USER`` · config ``user``: a user token minted locally with the server's key
     (``keycard auth print-access-token``; only on the server's host, with its database).

Errors: every non-2xx answer becomes one :class:`ApiError` (HTTP status, rpc status, ErrorInfo reason,
message, metadata, and a hint: the grant command the server suggested, or how to find one).
"""

from __future__ import annotations

import os
import re
import shlex
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import yaml

if TYPE_CHECKING:
    import httpx


def _httpx() -> Any:
    """httpx, imported on first use: every `keycard` command (and `keycard serve`) imports this module,
    and only commands that talk to a server need the HTTP client (a third of a second of imports)."""
    import httpx
    return httpx

__all__ = ["ApiError", "Client", "Config", "TokenSource", "config_path", "connect", "default_project",
           "resolve_endpoint"]

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
CONFIG_KEYS = {
    "endpoint": "URL of the keycard server, e.g. http://127.0.0.1:8080",
    "key_file": "service-account key file to call with",
    "user": "user to mint a local token for (on the server's host), e.g. alice@example.com",
    "database": "the server's database (for the local user token), sqlite:///PATH or postgresql://...",
    "data_dir": "the server's data directory (for the local user token; default .keycard)",
    "project": "default project of commands that take --project",
}


# ------------------------------------------------------------------------------------------- errors
class ApiError(Exception):
    """A keycard server (or the way to it) said no: one exception for every failure of a call."""

    def __init__(self, http_status: int, status: str, message: str, *, reason: str = "",
                 metadata: Mapping[str, str] | None = None, hint: str = "") -> None:
        super().__init__(message)
        self.http_status = http_status
        self.status = status
        self.message = message
        self.reason = reason or status
        self.metadata = dict(metadata or {})
        self.hint = hint

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """Google's JSON error (google.rpc.Status + ErrorInfo), or the OAuth2 error shape, or plain text."""
        try:
            body = response.json()
        except ValueError:
            body = None
        status, message, reason, metadata = "UNKNOWN", response.text.strip()[:500], "", {}
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            e = body["error"]
            status = str(e.get("status") or status)
            message = str(e.get("message") or message)
            for d in e.get("details") or []:
                if isinstance(d, dict) and str(d.get("@type", "")).endswith("google.rpc.ErrorInfo"):
                    reason = str(d.get("reason") or "")
                    metadata = {str(k): str(v) for k, v in (d.get("metadata") or {}).items()}
        elif isinstance(body, dict) and isinstance(body.get("error"), str):
            status, reason = "UNAUTHENTICATED", str(body["error"])
            message = str(body.get("error_description") or body["error"])
        if not message:
            message = f"HTTP {response.status_code} from {response.request.url}"
        return cls(response.status_code, status, message, reason=reason, metadata=metadata,
                   hint=_hint(response.status_code, message, metadata))


def _hint(http_status: int, message: str, metadata: Mapping[str, str]) -> str:
    """What to do next: the server's own grant command, or the commands that find one."""
    m = re.search(r"Grant it with: (keycard .+?)(?:$|\s*\(|\.\s)", message)
    if m:
        return f"To grant it: {m.group(1)}"
    if http_status == 403 and metadata.get("permission"):
        perm, res = metadata["permission"], metadata.get("resource", "")
        return (f"Ask an administrator of {res or 'the resource'} for a role with {perm}: "
                f"`keycard iam roles find {perm}` lists the smallest, and "
                f"`keycard iam troubleshoot PRINCIPAL {perm} {shlex.quote(res) if res else 'RESOURCE'}` "
                "shows why it is denied.")
    if http_status == 401:
        return ("Sign in: pass --key-file (a service-account key), --access-token, or on the server's host "
                "--user EMAIL; see `keycard config list`.")
    if http_status == 409 and "concurrent" in message.lower():
        return "Read the policy again and retry (add-iam-policy-binding does this on the server for you)."
    return ""


# ------------------------------------------------------------------------------------------- config
def config_path() -> Path:
    """``KEYCARD_CONFIG``, else ``$XDG_CONFIG_HOME/keycard/config.yaml`` (``~/.config/keycard/config.yaml``)."""
    if os.environ.get("KEYCARD_CONFIG"):
        return Path(os.environ["KEYCARD_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "keycard" / "config.yaml"


@dataclass(slots=True)
class Config:
    """The user's keycard settings (a flat YAML mapping of :data:`CONFIG_KEYS`)."""

    values: dict[str, str] = field(default_factory=dict)
    path: Path = field(default_factory=config_path)

    @classmethod
    def load(cls, path: Path | None = None) -> Config:
        p = path or config_path()
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) if p.exists() else {}
        except (OSError, yaml.YAMLError) as e:
            raise ApiError(0, "INVALID_ARGUMENT", f"Cannot read the config file {p}: {e}. Fix or delete it.",
                           reason="BAD_CONFIG") from None
        if not isinstance(data, dict):
            data = {}
        return cls({str(k): str(v) for k, v in data.items() if v is not None}, p)

    def get(self, key: str) -> str | None:
        return self.values.get(key)

    def set(self, key: str, value: str | None) -> None:
        if key not in CONFIG_KEYS:
            raise ApiError(0, "INVALID_ARGUMENT", f"Unknown config key {key!r}: use one of "
                           f"{', '.join(sorted(CONFIG_KEYS))}.", reason="BAD_CONFIG")
        if value is None:
            self.values.pop(key, None)
        else:
            self.values[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(yaml.safe_dump(self.values, sort_keys=True), encoding="utf-8")


def resolve_endpoint(explicit: str | None, config: Config | None = None) -> str:
    url = explicit or os.environ.get("KEYCARD_ENDPOINT") or (config or Config.load()).get("endpoint")
    if not url:
        raise ApiError(0, "FAILED_PRECONDITION", "No keycard server to talk to.", reason="NO_ENDPOINT",
                       hint="Pass --endpoint URL, set KEYCARD_ENDPOINT, or run "
                            "`keycard config set endpoint http://HOST:PORT`.")
    if not url.startswith(("http://", "https://")):
        raise ApiError(0, "INVALID_ARGUMENT", f"Invalid endpoint {url!r}: use http://HOST:PORT or https://HOST.",
                       reason="BAD_ENDPOINT")
    return url.rstrip("/")


def default_project(explicit: str | None) -> str:
    """``--project``, else ``KEYCARD_PROJECT``, else config ``project``; an ApiError saying how otherwise."""
    project = explicit or os.environ.get("KEYCARD_PROJECT") or Config.load().get("project")
    if not project:
        raise ApiError(0, "INVALID_ARGUMENT", "Which project?", reason="NO_PROJECT",
                       hint="Pass --project PROJECT_ID, set KEYCARD_PROJECT, or run "
                            "`keycard config set project PROJECT_ID`.")
    return project.removeprefix("projects/")


# -------------------------------------------------------------------------------------- credentials
class TokenSource(Protocol):
    """Something that yields a bearer token (refreshing it when it expires)."""

    def token(self) -> str: ...


@dataclass(frozen=True, slots=True)
class StaticToken:
    value: str

    def token(self) -> str:
        return self.value


class _AuthResponse:
    """google.auth.transport.Response over an httpx response."""

    def __init__(self, r: httpx.Response) -> None:
        self.status = r.status_code
        self.headers = dict(r.headers)
        self.data = r.content


class _AuthRequest:
    """google.auth.transport.Request over httpx (so google-auth needs no ``requests``)."""

    def __init__(self, http: httpx.Client) -> None:
        self._http = http

    def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Mapping[str, str] | None = None,
                 timeout: float | None = None, **_: Any) -> _AuthResponse:
        from google.auth import exceptions
        try:
            r = self._http.request(method, url, content=body, headers=dict(headers or {}),
                                   timeout=timeout if timeout is not None else 30.0)
        except _httpx().HTTPError as e:
            raise exceptions.TransportError(str(e)) from e  # type: ignore[no-untyped-call]
        return _AuthResponse(r)


class GoogleAuthToken:
    """A google-auth Credentials object, refreshed with :meth:`refresh` only (never ``before_request``,
    which would start google-auth's background Regional Access Boundary lookup to googleapis.com)."""

    def __init__(self, credentials: Any, http: httpx.Client, what: str) -> None:
        self._creds = credentials
        self._request = _AuthRequest(http)
        self._what = what

    def token(self) -> str:
        from google.auth import exceptions
        if not self._creds.valid:
            try:
                self._creds.refresh(self._request)
            except exceptions.GoogleAuthError as e:
                raise ApiError(401, "UNAUTHENTICATED", f"Cannot get a token with {self._what}: {e}",
                               reason="TOKEN_REFRESH_FAILED",
                               hint="Check the key file (is the key disabled or deleted?) and that its token_uri "
                                    "points at this keycard server.") from None
        return str(self._creds.token)


class LocalUserToken:
    """A user token minted with the server's signing key (only where the server's database is)."""

    def __init__(self, user: str, database: str) -> None:
        self._user, self._database = user, database
        self._value, self._expires = "", 0.0

    def token(self) -> str:
        if time.monotonic() >= self._expires:
            from keycard.server import mint_local_token
            hint = ("Run this on the server's host with its database (KEYCARD_DATABASE, or config database / "
                    "data_dir), or sign in with --key-file or --access-token.")
            if self._database.startswith("sqlite:///") and not Path(self._database[len("sqlite:///"):]).exists():
                raise ApiError(0, "UNAUTHENTICATED", f"Cannot mint a token for {self._user}: no keycard database "
                               f"at {self._database}.", reason="NO_LOCAL_DATABASE", hint=hint)
            try:
                self._value = mint_local_token(self._database, self._user, lifetime=3600)
            except Exception as e:              # a store that cannot be opened or has no installation, a bad user
                first = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
                raise ApiError(0, "UNAUTHENTICATED", f"Cannot mint a token for {self._user} from {self._database}: "
                               f"{first}", reason="LOCAL_TOKEN_FAILED", hint=hint) from None
            self._expires = time.monotonic() + 3000
        return self._value


def credentials(http: httpx.Client, *, access_token: str | None = None, key_file: str | None = None,
                user: str | None = None, config: Config | None = None) -> TokenSource:
    """The caller's credentials, in the documented order."""
    cfg = config or Config.load()
    token = access_token or os.environ.get("KEYCARD_ACCESS_TOKEN")
    if token:
        return StaticToken(token.strip())
    path = key_file or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") or cfg.get("key_file")
    if path:
        from google.oauth2 import service_account
        try:
            creds = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                path, scopes=list(SCOPES))
        except (OSError, ValueError, KeyError) as e:
            raise ApiError(0, "INVALID_ARGUMENT", f"Cannot use the key file {path}: {e}.", reason="BAD_KEY_FILE",
                           hint="Pass a service-account key file made by `keycard iam service-accounts keys "
                                "create`.") from None
        return GoogleAuthToken(creds, http, f"key file {path}")
    who = user or os.environ.get("KEYCARD_USER") or cfg.get("user")
    if os.environ.get("GCE_METADATA_HOST") and not who:
        from google.auth import compute_engine
        mds = compute_engine.Credentials(scopes=list(SCOPES))  # type: ignore[no-untyped-call]
        return GoogleAuthToken(mds, http, "the metadata server")
    if who:
        database = (os.environ.get("KEYCARD_DATABASE") or cfg.get("database")
                    or f"sqlite:///{Path(cfg.get('data_dir') or '.keycard').resolve() / 'keycard.db'}")
        return LocalUserToken(who, database)
    raise ApiError(0, "UNAUTHENTICATED", "No credentials to call the keycard server with.", reason="NO_CREDENTIALS",
                   hint="Pass --key-file KEY.json (or set GOOGLE_APPLICATION_CREDENTIALS), --access-token TOKEN, "
                        "or on the server's host --user EMAIL (or `keycard config set user EMAIL`).")


# ------------------------------------------------------------------------------------------- client
class Client:
    """Calls a keycard server's REST APIs at Google's paths, with the caller's bearer token."""

    def __init__(self, endpoint: str, creds: TokenSource | None, *, http: httpx.Client | None = None,
                 timeout: float = 60.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.http = http or _httpx().Client(timeout=timeout)
        self.creds = creds

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None,
                content: bytes | Iterable[bytes] | None = None, headers: Mapping[str, str] | None = None) -> Any:
        """One call; the decoded JSON answer (``{}`` for an empty body), or :class:`ApiError`."""
        r = self.raw(method, path, params=params, json=json, content=content, headers=headers)
        if not r.content:
            return {}
        ctype = r.headers.get("content-type", "")
        return r.json() if "json" in ctype else r.content

    def raw(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None,
            content: bytes | Iterable[bytes] | None = None, headers: Mapping[str, str] | None = None) -> httpx.Response:
        h = dict(headers or {})
        if self.creds is not None:
            h["Authorization"] = f"Bearer {self.creds.token()}"
        url = path if path.startswith(("http://", "https://")) else f"{self.endpoint}/{path.lstrip('/')}"
        q = {k: _param(v) for k, v in (params or {}).items() if v is not None}
        try:
            r = self.http.request(method, url, params=q, json=json, content=content, headers=h)
        except _httpx().HTTPError as e:
            raise ApiError(0, "UNAVAILABLE", f"Cannot reach the keycard server at {self.endpoint}: {e}",
                           reason="UNREACHABLE", hint="Is `keycard serve` running there? Check --endpoint / "
                           "`keycard config get endpoint`.") from None
        if r.status_code >= 400:
            raise ApiError.from_response(r)
        return r

    def download(self, path: str, sink: Callable[[bytes], object], *, params: Mapping[str, Any] | None = None,
                 size: Callable[[int | None], object] | None = None) -> None:
        """Stream a media body into ``sink`` (``size`` learns Content-Length first), or ApiError."""
        h = {"Authorization": f"Bearer {self.creds.token()}"} if self.creds is not None else {}
        try:
            with self.http.stream("GET", f"{self.endpoint}/{path.lstrip('/')}", params=dict(params or {}),
                                  headers=h) as r:
                if r.status_code >= 400:
                    r.read()
                    raise ApiError.from_response(r)
                if size is not None:
                    length = r.headers.get("content-length")
                    size(int(length) if length and length.isdigit() else None)
                for chunk in r.iter_bytes():
                    sink(chunk)
        except _httpx().HTTPError as e:
            raise ApiError(0, "UNAVAILABLE", f"Download from {self.endpoint} failed: {e}", reason="UNREACHABLE"
                           ) from None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any = None, **params: Any) -> Any:
        return self.request("POST", path, json=body if body is not None else {}, params=params)

    def patch(self, path: str, body: Any, **params: Any) -> Any:
        return self.request("PATCH", path, json=body, params=params)

    def delete(self, path: str, **params: Any) -> Any:
        return self.request("DELETE", path, params=params)

    def pages(self, path: str, key: str, *, params: Mapping[str, Any] | None = None,
              limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Every item of a paged list (``pageToken`` / ``nextPageToken``), at most ``limit``."""
        q = dict(params or {})
        seen = 0
        while True:
            page = self.get(path, **q)
            for item in page.get(key, []) if isinstance(page, dict) else []:
                yield item
                seen += 1
                if limit is not None and seen >= limit:
                    return
            token = page.get("nextPageToken") if isinstance(page, dict) else None
            if not token:
                return
            q["pageToken"] = token


def _param(v: Any) -> Any:
    if isinstance(v, bool):
        return "true" if v else "false"
    return v


def connect(endpoint: str | None = None, *, access_token: str | None = None, key_file: str | None = None,
            user: str | None = None, timeout: float = 60.0) -> Client:
    """A client for the configured server and caller (see the module docstring for the order)."""
    cfg = Config.load()
    url = resolve_endpoint(endpoint, cfg)
    http = _httpx().Client(timeout=timeout)
    try:
        creds = credentials(http, access_token=access_token, key_file=key_file, user=user, config=cfg)
    except BaseException:
        http.close()
        raise
    return Client(url, creds, http=http)
