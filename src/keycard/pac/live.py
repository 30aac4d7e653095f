"""Reading a server's current state over Google's APIs (Resource Manager v3, IAM v1/v2, Cloud Identity v1).

Besides the State, a Live remembers what writing back needs: the server's names for folders and
projects, the etags every policy and role was read at, and the groups' and memberships' names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from keycard.client import ApiError, Client
from keycard.pac.document import DocumentError, normalise_deny
from keycard.pac.model import (
    AUTHORITATIVE,
    ORG,
    GroupSpec,
    Node,
    RoleSpec,
    State,
    bindings_from_json,
)

CRM = "cloudresourcemanager.googleapis.com"


@dataclass
class Live:
    state: State
    customer: str = ""
    names: dict[str, str] = field(default_factory=dict)          # node id → organizations/N, folders/N, projects/N
    etags: dict[str, str] = field(default_factory=dict)          # node id → policy etag
    deny_etags: dict[tuple[str, str], str] = field(default_factory=dict)
    role_etags: dict[str, str] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)         # email → groups/ID
    memberships: dict[tuple[str, str], str] = field(default_factory=dict)   # (group email, member) → name
    numbers: dict[str, str] = field(default_factory=dict)        # project id → number

    @property
    def org_number(self) -> str:
        return self.state.organization.split("/", 1)[1]


def attachment(name: str) -> str:
    """IAM v2's attachment point for organizations/N, folders/N, projects/P, URL-encoded as one segment."""
    return quote(f"{CRM}/{name}", safe="")


def policy_path(node: Node, live: Live) -> str:
    if node.kind == "serviceAccount":
        pid = node.key.split("@", 1)[1].split(".", 1)[0]
        return f"/v1/projects/{pid}/serviceAccounts/{node.key}"
    return f"/v3/{live.names[node.id]}"


def _managed(email: str, number: str) -> bool:
    """A Google-managed account of the project (default compute account, service agents): not declared."""
    return number in email.split("@", 1)[0]


def read_live(client: Client, *, organization: str | None = None, project: str | None = None,
              progress: Callable[[str], None] = lambda _m: None) -> Live:
    orgs = client.get("/v3/organizations:search").get("organizations", [])
    if organization:
        want = organization if organization.startswith("organizations/") else f"organizations/{organization}"
        orgs = [o for o in orgs if o["name"] == want]
    if not orgs:
        raise DocumentError("No organization is visible to this caller" + (f" named {organization}" if organization
                            else "") + ": check --endpoint and the credentials (resourcemanager.organizations.get).")
    org = orgs[0]
    live = Live(State(organization=org["name"]), customer=str(org.get("directoryCustomerId", "")))
    live.names[ORG] = org["name"]
    if project is None:
        _read_node(client, live, Node(ORG, ""), progress)
        _read_roles(client, live, org["name"])
        _read_children(client, live, org["name"], ORG, "", progress)
        _read_groups(client, live, progress)
    else:
        p = client.get(f"/v3/projects/{project}")
        _read_project(client, live, p, _parent_id(client, live, p["parent"]), progress)
    return live


def caller_principal(client: Client) -> str | None:
    """Who the client calls as (OAuth2 tokeninfo), or None when that cannot be told."""
    if client.creds is None:
        return None
    try:
        info = client.request("POST", "/oauth2/v3/tokeninfo", json={"access_token": client.creds.token()})
    except ApiError:
        return None
    email = str(info.get("email", "")) if isinstance(info, dict) else ""
    if not email:
        return None
    return f"serviceAccount:{email}" if email.endswith(".gserviceaccount.com") else f"user:{email}"


def _parent_id(client: Client, live: Live, parent: str) -> str:
    """The node id of a project's parent, walking folders up to the organization for their path."""
    if parent.startswith("organizations/"):
        return ORG
    parts: list[str] = []
    name = parent
    while name.startswith("folders/"):
        f = client.get(f"/v3/{name}")
        parts.insert(0, f["displayName"])
        name = f["parent"]
    path = "/".join(parts)
    live.names[f"folder:{path}"] = parent
    return f"folder:{path}"


def _read_children(client: Client, live: Live, parent: str, parent_id: str, path: str,
                   progress: Callable[[str], None]) -> None:
    for f in client.pages("/v3/folders", "folders", params={"parent": parent}):
        fpath = f"{path}/{f['displayName']}" if path else f["displayName"]
        node = Node("folder", fpath, parent=parent_id, attrs={"displayName": f["displayName"]})
        live.names[node.id] = f["name"]
        _read_node(client, live, node, progress)
        _read_children(client, live, f["name"], node.id, fpath, progress)
    for p in client.pages("/v3/projects", "projects", params={"parent": parent}):
        _read_project(client, live, p, parent_id, progress)


def _read_project(client: Client, live: Live, p: dict[str, Any], parent_id: str,
                  progress: Callable[[str], None]) -> None:
    pid = p["projectId"]
    number = p["name"].split("/", 1)[1]
    live.numbers[pid] = number
    node = Node("project", pid, parent=parent_id, attrs={"displayName": p.get("displayName", pid),
                                                         "labels": dict(p.get("labels") or {})})
    live.names[node.id] = p["name"]
    _read_node(client, live, node, progress)
    _read_roles(client, live, f"projects/{pid}")
    for a in client.pages(f"/v1/projects/{pid}/serviceAccounts", "accounts", params={"pageSize": 100}):
        if _managed(a["email"], number):
            continue
        sa = Node("serviceAccount", a["email"], parent=node.id,
                  attrs={"displayName": a.get("displayName", ""), "description": a.get("description", ""),
                         "disabled": bool(a.get("disabled", False))})
        _read_node(client, live, sa, progress)


def _read_node(client: Client, live: Live, node: Node, progress: Callable[[str], None]) -> None:
    progress(f"reading {node.id}")
    pol = client.post(policy_path(node, live) + ":getIamPolicy", {"options": {"requestedPolicyVersion": 3}})
    node.mode = AUTHORITATIVE
    bindings = bindings_from_json(pol.get("bindings", []))
    if node.kind == "project":     # the project's Google-managed service agents are the platform's, not declared
        number = live.numbers[node.key]
        bindings = {k: frozenset(m for m in ms if not _managed(m, number)) for k, ms in bindings.items()}
        bindings = {k: v for k, v in bindings.items() if v}
    node.bindings = bindings
    live.etags[node.id] = str(pol.get("etag", ""))
    node.deny = {}
    if node.kind != "serviceAccount":
        for d in client.pages(f"/v2/policies/{attachment(live.names[node.id])}/denypolicies", "policies"):
            pid = d["name"].rsplit("/", 1)[1]
            node.deny[pid] = normalise_deny(d)
            live.deny_etags[(node.id, pid)] = str(d.get("etag", ""))
    live.state.nodes[node.id] = node


def _read_roles(client: Client, live: Live, parent: str) -> None:
    for r in client.pages(f"/v1/{parent}/roles", "roles", params={"view": "FULL", "showDeleted": True,
                                                                  "pageSize": 1000}):
        live.state.roles[r["name"]] = RoleSpec(r["name"], r.get("title", ""), r.get("description", ""),
                                               r.get("stage", "ALPHA"), tuple(sorted(r.get("includedPermissions", []))),
                                               bool(r.get("deleted", False)))
        live.role_etags[r["name"]] = str(r.get("etag", ""))


_TYPES = {"USER": "user", "SERVICE_ACCOUNT": "serviceAccount", "GROUP": "group"}


def _read_groups(client: Client, live: Live, progress: Callable[[str], None]) -> None:
    try:
        groups = list(client.pages("/v1/groups", "groups", params={"parent": f"customers/{live.customer}",
                                                                   "pageSize": 1000}))
    except ApiError as e:
        if e.http_status == 403:      # a caller who may not list groups: groups are left out of the state
            return
        raise
    for g in groups:
        email = str(g["groupKey"]["id"]).lower()
        progress(f"reading group {email}")
        live.groups[email] = g["name"]
        members = set()
        for m in client.pages(f"/v1/{g['name']}/memberships", "memberships", params={"pageSize": 1000}):
            key = f"{_TYPES.get(str(m.get('type')), 'user')}:{str(m['preferredMemberKey']['id']).lower()}"
            members.add(key)
            live.memberships[(email, key)] = m["name"]
        live.state.groups[email] = GroupSpec(email, g.get("displayName", ""), g.get("description", ""),
                                             frozenset(members))
