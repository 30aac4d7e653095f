"""Local verification of keycard-signed credentials against keycard's JWKS, before asking keycard.

keycard access tokens (``kc1.`` + ES256 JWT) and keycard-minted ID tokens are signed with keys that
keycard publishes at ``/.well-known/jwks.json``. The proxy checks their signature and expiry itself,
so a forged, tampered or expired one is refused (401) without a call to keycard; a verified one still
goes to keycard, which decides and checks liveness (a disabled account or key). Verdicts are cached per
token; the JWKS is fetched at start and again on an unknown key id at most once per ``cooldown``
seconds (keycard may have rotated keys). Other credentials (service-account JWTs, the identity
provider's ID tokens) are keycard's to verify.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt
from jwt.algorithms import ECAlgorithm

__all__ = ["LocalCheck"]

_CACHE_LIMIT = 50_000


class LocalCheck:
    def __init__(self, jwks_url: str, *, cooldown: float = 30.0) -> None:
        self.jwks_url = jwks_url
        self.cooldown = cooldown
        self._keys: dict[str, Any] = {}
        self._fetched = float("-inf")
        self._verdicts: dict[str, tuple[float, str | None]] = {}    # token → (exp, why refused or None)

    async def refresh(self, client: httpx.AsyncClient) -> None:
        if time.monotonic() - self._fetched < self.cooldown:
            return
        self._fetched = time.monotonic()
        try:
            r = await client.get(self.jwks_url, timeout=10)
            keys = r.json().get("keys", []) if r.status_code == 200 else []
        except (httpx.HTTPError, ValueError, AttributeError):
            return
        loaded: dict[str, Any] = {}
        for k in keys if isinstance(keys, list) else []:
            if isinstance(k, dict) and k.get("kty") == "EC" and isinstance(k.get("kid"), str):
                try:
                    loaded[k["kid"]] = ECAlgorithm.from_jwk(k)
                except (jwt.PyJWTError, ValueError, KeyError):
                    continue
        if loaded:
            self._keys = loaded

    async def refusal(self, credential: str, client: httpx.AsyncClient) -> str | None:
        """Why a keycard-signed credential is refused here, or None (not keycard's, or it verifies)."""
        hit = self._verdicts.get(credential)
        now = time.time()
        if hit is not None and (hit[1] is not None or hit[0] > now):
            return hit[1]
        raw = credential[4:] if credential.startswith("kc1.") else credential
        try:
            header = jwt.get_unverified_header(raw)
        except jwt.PyJWTError:
            return "malformed token" if credential.startswith("kc1.") else None
        if header.get("alg") != "ES256":
            return "not signed by keycard" if credential.startswith("kc1.") else None
        kid = header.get("kid")
        if not isinstance(kid, str):
            return "no key id"
        if kid not in self._keys:
            await self.refresh(client)
            if kid not in self._keys:
                # not one of keycard's keys: a forged kc1 token, or another issuer's ES256 token
                return "signed by a key keycard does not publish" if credential.startswith("kc1.") else None
        try:
            claims = jwt.decode(raw, self._keys[kid], algorithms=["ES256"], leeway=30,
                                options={"verify_aud": False, "require": ["exp"]})
            verdict: tuple[float, str | None] = (float(claims["exp"]), None)
        except jwt.ExpiredSignatureError:
            verdict = (now, "the token expired; get a new one")
        except jwt.PyJWTError as e:
            verdict = (now, f"the token does not verify against keycard's keys: {e}")
        if len(self._verdicts) >= _CACHE_LIMIT:
            self._verdicts.clear()
        self._verdicts[credential] = verdict
        return verdict[1]
