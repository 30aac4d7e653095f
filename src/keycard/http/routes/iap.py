"""Identity-Aware Proxy v1 routes: IAM policies of IAP web resources, and keycard proxy's decisions.

Google's IAP admin API puts getIamPolicy/setIamPolicy/testIamPermissions at ``/v1/{resource=**}``;
keycard serves them for ``projects/P/iap_web[/…]``. ``:keycardCheckAccess`` and
``:keycardRecordAccess`` are keycard's extensions for ``keycard proxy`` (:mod:`keycard.services.iap`).
"""

from __future__ import annotations

from typing import Any

from keycard.http.app import App, RequestContext
from keycard.http.routing import Route, Router
from keycard.services import iap

_WEB = "/v1/projects/{project}/iap_web"
_UNDER = _WEB + "/{rest=**}"


def _relative(project: str, rest: str | None) -> str:
    return f"projects/{project}/iap_web" + (f"/{rest}" if rest else "")


def register(router: Router) -> None:
    def add(verb: str, handler: Any, permission: str, summary: str, *, web: bool = True) -> None:
        def under(app: App, ctx: RequestContext, project: str, rest: str) -> Any:
            return handler(app, ctx, _relative(project, rest))
        router.add(Route("POST", f"{_UNDER}:{verb}", under, f"iap.{verb}", permission.format(kind="webServices"),
                         summary=summary, body=True))
        if web:                          # projects/P/iap_web itself
            def top(app: App, ctx: RequestContext, project: str) -> Any:
                return handler(app, ctx, _relative(project, None))
            router.add(Route("POST", f"{_WEB}:{verb}", top, f"iap.web.{verb}", permission.format(kind="web"),
                             summary=summary, body=True))

    add("getIamPolicy", lambda app, ctx, name: iap.get_policy(app.services, ctx.caller, name, ctx.body),
        "iap.{kind}.getIamPolicy", "The IAM policy of an IAP web resource (permission of its type: "
                                   "iap.web / webTypes / webServices / webServiceVersions .getIamPolicy).")
    add("setIamPolicy", lambda app, ctx, name: iap.set_policy(app.services, ctx.caller, name, ctx.body,
                                                              allow_lockout=ctx.allow_lockout),
        "iap.{kind}.setIamPolicy", "Replace the IAM policy of an IAP web resource, e.g. bind "
                                   "roles/iap.httpsResourceAccessor (conditions see request.path/host/time).")
    add("testIamPermissions", lambda app, ctx, name: iap.test_permissions(app.services, ctx.caller, name, ctx.body),
        "", "The caller's permissions on an IAP web resource.")
    add("keycardCheckAccess", lambda app, ctx, name: iap.check_access(
        app.services, ctx.caller, app.authn, app.keys(), (app.base_url or str(ctx.request.base_url)).rstrip("/"),
        name, ctx.body),
        iap.PROXY_PERMISSION, "keycard proxy: decide one request (the end user's credential, path, host) and "
                              "sign its identity assertion; audited. The proxy needs iap.webServices.getSettings.",
        web=False)
    add("keycardRecordAccess", lambda app, ctx, name: iap.record_access(app.services, ctx.caller, name, ctx.body),
        iap.PROXY_PERMISSION, "keycard proxy: Data Access entries for requests decided from its 1 s decision "
                              "cache. The proxy needs iap.webServices.getSettings.", web=False)
