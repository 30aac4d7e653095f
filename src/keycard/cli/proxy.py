"""``keycard proxy``: put any HTTP service behind keycard's IAM (Identity-Aware Proxy)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from keycard.cli.output import err
from keycard.errors import KeycardError

__all__ = ["proxy"]


def proxy(
        upstream: Annotated[str, typer.Option(help="The service to protect, e.g. http://127.0.0.1:9000")],
        resource: Annotated[str, typer.Option(help="Its IAP resource, e.g. projects/my-proj/iap_web/compute/"
                                              "services/model-api (grant roles/iap.httpsResourceAccessor on it)")],
        listen: Annotated[str, typer.Option(help="HOST:PORT to serve on")] = "127.0.0.1:8443",
        endpoint: Annotated[str, typer.Option(envvar="KEYCARD_ENDPOINT", help="keycard's URL")] =
        "http://127.0.0.1:8080",
        token: Annotated[str | None, typer.Option(envvar="KEYCARD_TOKEN", show_default=False,
                                                  help="The proxy's own keycard token (its identity needs "
                                                  "iap.webServices.getSettings: roles/iap.settingsAdmin)")] = None,
        credentials: Annotated[Path | None, typer.Option(help="Or: a service-account key file for the proxy's "
                                                         "identity")] = None,
        audience: Annotated[list[str] | None, typer.Option(help="Audiences accepted in keycard-minted ID tokens "
                                                           "(repeatable; default: the proxy's URL)")] = None,
        public_url: Annotated[str | None, typer.Option(help="The URL browsers reach the proxy at (sign-in "
                                                       "redirects); default: from the Host header")] = None,
        tls_cert: Annotated[Path | None, typer.Option(help="Serve HTTPS with this certificate (PEM)")] = None,
        tls_key: Annotated[Path | None, typer.Option(help="… and this private key (PEM)")] = None,
        decision_ttl: Annotated[float, typer.Option(help="Seconds before a cached decision is renewed in the "
                                                    "background (a decision is never used once 0.9 s old)")] = 0.5,
) -> None:
    """Identity-aware reverse proxy: only callers keycard allows reach UPSTREAM, with their signed identity."""
    import uvicorn

    from keycard.proxy import Credential, Decisions, ProxyApp
    from keycard.services.iap import parse_iap_resource

    rn = parse_iap_resource(resource.removeprefix("//iap.googleapis.com/"), "--resource", served=True)
    if token is None and credentials is None:
        raise KeycardError("The proxy needs its own identity: pass --token (or KEYCARD_TOKEN) or --credentials "
                           "KEYFILE of a service account that holds roles/iap.settingsAdmin on the resource.")
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise KeycardError(f"Invalid --listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:8443.")
    if (tls_cert is None) != (tls_key is None):
        raise KeycardError("Pass both --tls-cert and --tls-key to serve HTTPS.")
    scheme = "https" if tls_cert else "http"
    own = public_url or f"{scheme}://{listen}"
    decisions = Decisions(endpoint, rn.relative, Credential(token, credentials),
                          audiences=list(dict.fromkeys([*(audience or []), own.rstrip("/")])), ttl=decision_ttl)
    secret = os.environ.get("KEYCARD_PROXY_COOKIE_SECRET")
    try:
        app = ProxyApp(decisions, upstream, cookie_secret=secret.encode() if secret else None,
                       client_secret=os.environ.get("KEYCARD_PROXY_CLIENT_SECRET"), public_url=public_url)
    except ValueError as e:
        raise KeycardError(f"Invalid --upstream: {e}.") from None
    err.print(f"keycard proxy: {own} → {upstream}, protected by {rn.relative} (decisions by {endpoint})",
              highlight=False, markup=False)
    uvicorn.run(app, host=host, port=int(port), log_level="warning", access_log=False, lifespan="on",
                ssl_certfile=str(tls_cert) if tls_cert else None, ssl_keyfile=str(tls_key) if tls_key else None,
                loop="uvloop", http="httptools")
