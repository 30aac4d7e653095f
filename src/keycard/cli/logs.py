"""``keycard logs read`` over HTTP: the server's audit log through Logging v2 ``entries.list``."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from keycard.cli.output import Format, _emit
from keycard.cli.remote import wide
from keycard.client import Client


def audit_row(e: dict[str, Any], first: str) -> tuple[str, ...]:
    """One table row of an audit entry (``first``: its sequence number or insertId)."""
    p = e.get("protoPayload", {})
    auths = p.get("authorizationInfo", [])
    denied = [a.get("permission", "") for a in auths if not a.get("granted")]
    granted = ("denied: " + ", ".join(denied)) if denied else ("yes" if auths else "-")
    return (first, str(e.get("timestamp", ""))[:19], p.get("authenticationInfo", {}).get("principalEmail", "-"),
            str(p.get("methodName", "")).rsplit(".", 1)[-1], p.get("resourceName", ""), granted)


def read_remote(client: Client, filter_: str, limit: int, project: str | None, organization: str | None,
                fmt: Format) -> None:
    """Newest first, at most ``limit``, from a project's or the organization's audit logs."""
    if project:
        container = f"projects/{project.removeprefix('projects/')}"
    elif organization:
        container = f"organizations/{organization.removeprefix('organizations/')}"
    else:
        orgs = client.get("/v3/organizations:search").get("organizations", [])
        container = orgs[0]["name"] if orgs else ""
    body: dict[str, Any] = {"resourceNames": [container], "filter": filter_, "orderBy": "timestamp desc",
                            "pageSize": min(max(limit, 1), 1000)}
    found: list[dict[str, Any]] = []
    while len(found) < limit:
        page = client.post("/v2/entries:list", body)
        found += page.get("entries", [])
        if not page.get("nextPageToken"):
            break
        body["pageToken"] = page["nextPageToken"]
    found = found[:max(limit, 0)]
    if fmt is not Format.table:
        _emit(found, fmt)
        return
    table = Table("insertId", "time", "principal", "method", "resource", "granted")
    for e in found:
        table.add_row(*audit_row(e, str(e.get("insertId", ""))))
    wide().print(table)
