"""Policy Troubleshooter routes: ``POST /v1/iam:troubleshoot`` and ``POST /v3/iam:troubleshoot``.

The answer explains allow and deny policies, so the caller must be able to read them: keycard asks for
the getIamPolicy permission of the access tuple's resource type on that resource (for a type without
one, the nearest ancestor that has one; at last ``resourcemanager.projects.getIamPolicy`` on the
nearest project). Anyone may troubleshoot their own access.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keycard import names
from keycard.errors import InvalidArgument
from keycard.http.app import App, RequestContext
from keycard.http.routing import Route, Router
from keycard.services import troubleshooter as ts
from keycard.services.common import Caller, Services
from keycard.services.remedy import membership_chains, remedy

SERVICE = "policytroubleshooter.googleapis.com"
_PROJECT_PREFIX = f"//{names.CRM}/projects/"
_SERVICE_PREFIX = {names.CRM: "resourcemanager"}
# Resource types whose own getIamPolicy permission exists (the catalog's); others use an ancestor's.
_GET_IAM_POLICY = frozenset({
    "resourcemanager.organizations.getIamPolicy", "resourcemanager.folders.getIamPolicy",
    "resourcemanager.projects.getIamPolicy", "ml.models.getIamPolicy", "ml.jobs.getIamPolicy",
    "storage.buckets.getIamPolicy", "iam.serviceAccounts.getIamPolicy",
})
# Types read through their parent's policy: an object's access is explained by its bucket's policy.
_VIA_PARENT = frozenset({"storage.googleapis.com/Object"})


def required_permission(svc: Services, resource: str) -> tuple[str, str]:
    """(permission, full resource name) a caller needs to troubleshoot access to ``resource``."""
    rn: names.ResourceName | None = names.parse_resource(resource, "accessTuple.fullResourceName")
    while rn is not None:
        service, _, kind = rn.type.partition("/")
        if rn.type not in _VIA_PARENT and kind and kind != "Unknown":
            permission = f"{_SERVICE_PREFIX.get(service, service.split('.')[0])}.{kind[0].lower()}{kind[1:]}s" \
                         ".getIamPolicy"
            if permission in _GET_IAM_POLICY:
                return permission, rn.full
        rn = names.parse_resource(rn.parent) if rn.parent else None
    project = next((a for a in svc.runtime.engine.ancestry(resource) if a.startswith(_PROJECT_PREFIX)), resource)
    return "resourcemanager.projects.getIamPolicy", project


def troubleshoot(svc: Services, caller: Caller, body: Any, *, v3: bool) -> dict[str, Any]:
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected {\"accessTuple\": {...}}.", field="accessTuple")
    at = ts.parse_access_tuple(body, v3=v3)
    if caller.principal is None or caller.principal.lower() != at.principal.lower():
        permission, target = required_permission(svc, at.full_resource_name)
        svc.authorize(caller, permission, target, service=SERVICE)
    engine = svc.runtime.engine
    # troubleshooting one's own access: the sets of the credential in hand count, as they do in a check
    extra = caller.extra_members if caller.principal is not None and \
        caller.principal.lower() == at.principal.lower() else None
    if v3:
        out = ts.troubleshoot_v3(engine, body, time=svc.clock(), extra_members=extra)
        when = at.receive_time or svc.clock()
        # keycard extensions (extra fields; Google's clients ignore them): nested group chains, what would grant it
        chains = membership_chains(engine, at.principal, at.permission, at.full_resource_name, time=when,
                                   extra_members=extra)
        if chains:
            out["keycardMembershipChains"] = chains
        if out["overallAccessState"] != "CAN_ACCESS":
            out["keycardRemedy"] = remedy(engine, at.principal, at.permission, at.full_resource_name, time=when)
        return out
    return ts.troubleshoot_v1(engine, body, time=svc.clock(), extra_members=extra)


def register(router: Router) -> None:
    def handler(v3: bool) -> Any:
        def run(app: App, ctx: RequestContext) -> dict[str, Any]:
            return troubleshoot(app.services, ctx.caller, ctx.body, v3=v3)
        return run

    router.add(Route("POST", "/v1/iam:troubleshoot", handler(False), "policytroubleshooter.iam.troubleshoot",
                     "resourcemanager.projects.getIamPolicy", body=True, read_log="ADMIN_READ",
                     summary="Explain whether a principal has a permission on a resource (v1). Needs the "
                             "resource's getIamPolicy permission, unless the principal is the caller."))
    router.add(Route("POST", "/v3/iam:troubleshoot", handler(True), "policytroubleshooter.iam.v3.troubleshoot",
                     "resourcemanager.projects.getIamPolicy", body=True, read_log="ADMIN_READ",
                     summary="Explain allow and deny policies for a principal, permission and resource (v3). "
                             "Needs the resource's getIamPolicy permission, unless the principal is the caller."))
