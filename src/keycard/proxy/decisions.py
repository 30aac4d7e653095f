"""The proxy's side of keycard: decisions (cached < 1 s), the audit of cached ones, its own credential.

The proxy never opens keycard's database: it asks ``POST /v1/{resource}:keycardCheckAccess`` with
its own bearer (a keycard token, or a self-signed JWT made from a service-account key file every
50 minutes) and needs ``iap.webServices.getSettings`` on the resource. A decision is cached per
(credential, host, path). It is used as is for ``ttl`` seconds; after that the first request that
finds it starts a renewal in the background and is answered from the cache, so steady traffic never
waits for keycard; a decision is never used once it is ``max_age`` seconds old (counted from when it
was asked for, < 1 s), so a revoked grant or a disabled account stops traffic within that time even
when keycard is slow to answer (requests then wait for the renewal). Concurrent misses of one key share
one call; a keycard-signed credential that does not verify against keycard's JWKS is refused here
(:mod:`.localcheck`). Requests answered from the cache are queued and sent to ``:keycardRecordAccess``
every ``flush_interval`` seconds; renewals are not audited by keycard (no request was decided by them).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from keycard.proxy.localcheck import LocalCheck

__all__ = ["Credential", "Decision", "Decisions", "KeycardUnavailable"]

MAX_TTL = 1.0
MAX_AGE = 0.9                              # the oldest a decision may be when used (< MAX_TTL)
ACCESS = "iap.webServiceVersions.accessViaIAP"
_CACHE_LIMIT = 50_000
_BATCH = 2000
_ENCODE_SLICE = 200


class KeycardUnavailable(Exception):
    """keycard could not be asked (network, 5xx, or the proxy's own credential was refused)."""


@dataclass(frozen=True, slots=True)
class Decision:
    decision: str                         # ALLOW | DENY | UNAUTHENTICATED
    principal: str | None = None
    email: str = ""
    user_id: str = ""
    assertion: str = ""
    message: str = ""
    permission: str = ""
    resource: str = ""
    sign_in: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Decision:
        return cls(str(data.get("decision", "UNAUTHENTICATED")), data.get("principal"), str(data.get("email", "")),
                   str(data.get("userId", "")), str(data.get("assertion", "")), str(data.get("message", "")),
                   str(data.get("permission", "")), str(data.get("resource", "")), data.get("signIn"))


class Credential:
    """The proxy's own bearer for keycard: a fixed token, or a key file's self-signed JWT (renewed)."""

    def __init__(self, token: str | None = None, key_file: Path | None = None) -> None:
        if token is None and key_file is None:
            raise ValueError("the proxy needs --token or --credentials to call keycard")
        self._token = token
        self._key_file = key_file
        self._minted_at = 0.0

    def bearer(self) -> str:
        if self._key_file is not None and (self._token is None or time.time() - self._minted_at > 3000):
            from keycard.identity.metadata import bearer_from_key_file
            self._token = bearer_from_key_file(self._key_file)
            self._minted_at = time.time()
        assert self._token is not None
        return self._token


@dataclass(slots=True)
class Decisions:
    endpoint: str                          # keycard's URL
    resource: str                          # projects/P/iap_web/TYPE/services/S
    credential: Credential
    audiences: list[str] = field(default_factory=list)
    ttl: float = 0.5
    flush_interval: float = 1.0
    clock: Callable[[], float] = time.monotonic
    _client: httpx.AsyncClient | None = None
    max_age: float = MAX_AGE
    _cache: dict[tuple[str, str, str], tuple[float, float, Decision]] = field(default_factory=dict)
    _inflight: dict[tuple[str, str, str], asyncio.Future[Decision]] = field(default_factory=dict)
    _renewals: set[asyncio.Task[Decision]] = field(default_factory=set)
    # requests answered from the cache, as flat tuples of strings and a float until they are sent: no
    # per-request dicts for the garbage collector to trace (principal, decision, caller ip, time, path, host, method)
    _pending: list[tuple[str | None, str, str, float, str, str, str]] = field(default_factory=list)
    _flusher: asyncio.Task[None] | None = None
    _local: LocalCheck = field(init=False)
    calls: int = 0                         # keycardCheckAccess calls made (for tests and the bench)

    def __post_init__(self) -> None:
        self.max_age = min(max(self.max_age, 0.0), MAX_AGE)
        self.ttl = min(max(self.ttl, 0.0), self.max_age)
        self._local = LocalCheck(self.endpoint.rstrip("/") + "/.well-known/jwks.json")

    async def start(self) -> None:
        self._client = httpx.AsyncClient(base_url=self.endpoint.rstrip("/"), timeout=10.0,
                                         limits=httpx.Limits(max_keepalive_connections=20))
        await self._local.refresh(self._client)
        self._flusher = asyncio.create_task(self._flush_loop())

    def _http(self) -> httpx.AsyncClient:
        assert self._client is not None, "Decisions.start() first"
        return self._client

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        for task in list(self._renewals):
            task.cancel()
        await self.flush()
        if self._client is not None:
            await self._client.aclose()

    async def decide(self, credential: str | None, host: str, path: str, method: str, caller_ip: str
                     ) -> Decision:
        key = (credential or "", host, path)
        now = self.clock()
        hit = self._cache.get(key)
        if hit is not None and hit[1] > now:
            renew_at, _, d = hit
            if renew_at <= now and key not in self._inflight:
                task = asyncio.create_task(self._fetch(key, credential, host, path, method, caller_ip, renewal=True))
                self._renewals.add(task)
                task.add_done_callback(_renewed(self._renewals))
            if d.decision != "UNAUTHENTICATED":
                self._pending.append((d.principal, d.decision, caller_ip, time.time(), path, host, method))
            return d
        waiting = self._inflight.get(key)
        if waiting is not None:
            return await asyncio.shield(waiting)
        return await self._fetch(key, credential, host, path, method, caller_ip)

    async def _fetch(self, key: tuple[str, str, str], credential: str | None, host: str, path: str, method: str,
                     caller_ip: str, *, renewal: bool = False) -> Decision:
        """Ask keycard (one call per key at a time) and cache the answer, aged from when it was asked."""
        fut: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        asked = self.clock()
        try:
            why = await self._local.refusal(credential, self._http()) if credential else None
            if why is not None:
                d = Decision("UNAUTHENTICATED", message=f"Request had invalid authentication credentials: {why}.",
                             permission=ACCESS, resource=self.resource)
            else:
                d = await self._ask(credential, host, path, method, caller_ip, renewal=renewal)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            renew_at = asked + self.ttl
            # refusals of callers with no valid credential are audited by keycard as it decides: not renewed
            self._cache[key] = (renew_at, renew_at if d.decision == "UNAUTHENTICATED" else asked + self.max_age, d)
            fut.set_result(d)
            return d
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()              # retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            self._inflight.pop(key, None)

    async def _ask(self, credential: str | None, host: str, path: str, method: str, caller_ip: str, *,
                   renewal: bool = False) -> Decision:
        assert self._client is not None, "Decisions.start() first"
        self.calls += 1
        body: dict[str, Any] = {"credential": credential, "audiences": self.audiences, "callerIp": caller_ip,
                                "request": {"path": path, "host": host, "method": method}}
        if renewal:
            body["renewal"] = True
        try:
            r = await self._client.post(f"/v1/{self.resource}:keycardCheckAccess", json=body,
                                        headers={"Authorization": f"Bearer {self.credential.bearer()}"})
        except httpx.HTTPError as e:
            raise KeycardUnavailable(f"keycard at {self.endpoint} did not answer: {e}") from None
        if r.status_code != 200:
            raise KeycardUnavailable(f"keycard refused the proxy's decision request ({r.status_code}): "
                                     f"{_message(r)}")
        return Decision.from_json(r.json())

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await self.flush()
            except Exception:             # keep serving; the next flush retries what is still queued
                continue

    async def flush(self) -> None:
        """Send the cache-hit records queued so far to keycard's audit log, at most ``_BATCH`` a call.
        Records queued while this runs wait for the next flush: under steady traffic that is one call per
        ``flush_interval``, not a stream of small calls each costing keycard a transaction."""
        queued, self._pending = self._pending, []
        while queued and self._client is not None:
            batch, queued = queued[:_BATCH], queued[_BATCH:]
            body = await _entries_json(batch)
            try:
                r = await self._client.post(f"/v1/{self.resource}:keycardRecordAccess", content=body, headers={
                    "Authorization": f"Bearer {self.credential.bearer()}", "Content-Type": "application/json"})
            except httpx.HTTPError:
                r = None
            if r is None or r.status_code >= 500:
                queued[:0] = batch               # keep them for the next try
                break
        self._pending[:0] = queued


def _renewed(tasks: set[asyncio.Task[Decision]]) -> Callable[[asyncio.Task[Decision]], None]:
    def done(task: asyncio.Task[Decision]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()             # a failed renewal: the next request after max_age asks again
    return done


async def _entries_json(batch: list[tuple[str | None, str, str, float, str, str, str]]) -> bytes:
    """``{"entries": [...]}`` for keycardRecordAccess, encoded a slice at a time with the event loop let
    through in between: a whole second's records at once would hold up requests for milliseconds."""
    parts: list[str] = []
    seconds: dict[int, str] = {}
    for i in range(0, len(batch), _ENCODE_SLICE):
        if i:
            await asyncio.sleep(0)
        rows = []
        for principal, decision, ip, t, path, host, method in batch[i:i + _ENCODE_SLICE]:
            whole = int(t)
            stamp = seconds.get(whole)
            if stamp is None:
                stamp = seconds[whole] = dt.datetime.fromtimestamp(whole, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
            rows.append({"principal": principal, "decision": decision, "callerIp": ip,
                         "time": f"{stamp}.{int((t - whole) * 1e6):06d}Z",
                         "request": {"path": path, "host": host, "method": method}})
        parts.append(json.dumps(rows, separators=(",", ":"))[1:-1])
    return ('{"entries":[' + ",".join(parts) + "]}").encode()


def _message(r: httpx.Response) -> str:
    try:
        err = r.json().get("error", {})
        return str(err.get("message") or err)
    except (ValueError, AttributeError):
        return r.text[:200]
