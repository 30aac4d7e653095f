"""The benchmark workload: a seeded Google Cloud organization, as keycard's public API takes it.

``generate(scale, seed)`` builds, deterministically for a (scale, seed):

- ``assets``: Cloud Asset Inventory export records (``gcloud asset export
  --content-type=resource`` merged with ``iam-policy``), one organization → folders nested
  1 to 4 deep → projects → ML models (each with a version), buckets and service accounts;
- ``groups``: ``{group-email: [members]}`` nested up to 3 levels (user → group → group → group);
- ``roles``: custom roles (IAM v1 JSON) at organization and project level, some DISABLED;
- ``deny_policies``: IAM v2 deny policies at organization, folder and project level, some with
  exception principals, exception permissions and denial conditions;
- ``queries``: a fixed list of ``(principal, permission, resource_full_name, class_label)``
  covering every way to be allowed or denied (:data:`ALLOW_CLASSES`, :data:`DENY_CLASSES`),
  about half allowed, each labelled and checked with the reference evaluator
  (:mod:`bench.peers.naive`); ``meta`` holds per-query depth, group depth, expected decision
  and the IAM features the decision touches.

Predefined roles are not part of the workload: keycard has its own built-in catalog
(``keycard.catalog.builtin_roles()``); at the large scale the real catalog
``../shared/data/gcp-iam/roles.json`` is passed in as well (read at run time, never copied).
"""

from __future__ import annotations

import base64
import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from bench.model import CRM, relative_name, v1_to_v2_permission

SCALES: dict[str, int] = {"small": 1_000, "medium": 100_000, "large": 1_000_000}
FIXED_TIME = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
GENERATOR_VERSION = 7

REPO = Path(__file__).resolve().parent.parent
SHARED_ROLES = REPO.parent / "shared" / "data" / "gcp-iam" / "roles.json"
SERVICES = ("ml", "iam", "iamcredentials", "sts", "resourcemanager", "storage", "logging", "iap", "orgpolicy")

ORG_NUM = "461902537210"
ORG = CRM + "organizations/" + ORG_NUM
DOMAINS = ("acme.com", "acme-labs.com", "partner.io")   # the last is outside the organization
DOMAIN_WEIGHTS = (0.6, 0.25, 0.15)

T_ORG = "cloudresourcemanager.googleapis.com/Organization"
T_FOLDER = "cloudresourcemanager.googleapis.com/Folder"
T_PROJECT = "cloudresourcemanager.googleapis.com/Project"
T_BUCKET = "storage.googleapis.com/Bucket"
T_MODEL = "ml.googleapis.com/Model"
T_VERSION = "ml.googleapis.com/Version"
T_SA = "iam.googleapis.com/ServiceAccount"
LEAF_TYPES = (T_BUCKET, T_MODEL, T_SA)

# The permissions queries ask, per asset type (each one applies to that type).
TYPE_PERMS: dict[str, tuple[str, ...]] = {
    T_ORG: ("resourcemanager.organizations.get", "resourcemanager.organizations.getIamPolicy",
            "resourcemanager.folders.list", "resourcemanager.projects.list",
            "resourcemanager.organizations.setIamPolicy", "orgpolicy.policy.get"),
    T_FOLDER: ("resourcemanager.folders.get", "resourcemanager.folders.update",
               "resourcemanager.folders.getIamPolicy", "resourcemanager.folders.setIamPolicy",
               "resourcemanager.projects.create", "resourcemanager.folders.list"),
    T_PROJECT: ("resourcemanager.projects.get", "resourcemanager.projects.delete",
                "resourcemanager.projects.getIamPolicy", "resourcemanager.projects.setIamPolicy",
                "ml.models.list", "ml.models.create", "ml.jobs.create", "storage.buckets.list",
                "storage.buckets.create", "iam.serviceAccounts.list", "iam.serviceAccounts.create",
                "logging.logEntries.list"),
    T_MODEL: ("ml.models.get", "ml.models.predict", "ml.models.update", "ml.models.delete",
              "ml.versions.list", "ml.versions.create", "ml.models.getIamPolicy", "ml.models.setIamPolicy"),
    T_VERSION: ("ml.versions.get", "ml.versions.predict", "ml.versions.delete", "ml.versions.update"),
    T_BUCKET: ("storage.buckets.get", "storage.buckets.delete", "storage.buckets.update",
               "storage.objects.get", "storage.objects.list", "storage.objects.create",
               "storage.objects.delete", "storage.buckets.getIamPolicy", "storage.buckets.setIamPolicy"),
    T_SA: ("iam.serviceAccounts.get", "iam.serviceAccounts.actAs", "iam.serviceAccounts.getAccessToken",
           "iam.serviceAccounts.signBlob", "iam.serviceAccounts.delete", "iam.serviceAccounts.update",
           "iam.serviceAccounts.getIamPolicy", "iam.serviceAccounts.setIamPolicy"),
}
ALL_QUERY_PERMS = sorted({p for ps in TYPE_PERMS.values() for p in ps})

CONTAINER_ROLES = (
    "roles/resourcemanager.folderViewer", "roles/resourcemanager.folderAdmin",
    "roles/resourcemanager.projectIamAdmin", "roles/resourcemanager.organizationViewer",
    "roles/resourcemanager.projectDeleter", "roles/browser", "roles/ml.viewer", "roles/ml.developer",
    "roles/ml.admin", "roles/storage.objectViewer", "roles/storage.objectAdmin", "roles/storage.admin",
    "roles/iam.serviceAccountUser", "roles/iam.serviceAccountViewer", "roles/iam.serviceAccountAdmin",
    "roles/iam.serviceAccountTokenCreator", "roles/logging.viewer", "roles/iam.securityReviewer",
    "roles/orgpolicy.policyViewer", "roles/viewer", "roles/editor", "roles/owner",
)
CONTAINER_WEIGHTS = (6, 2, 2, 2, 1, 6, 6, 3, 2, 6, 3, 2, 4, 4, 2, 2, 4, 2, 2, 3, 1, 1)
WEAK_CONTAINER_ROLES = ("roles/browser", "roles/resourcemanager.folderViewer", "roles/logging.viewer",
                        "roles/orgpolicy.policyViewer", "roles/iam.roleViewer")
TYPE_ROLES: dict[str, tuple[str, ...]] = {
    T_BUCKET: ("roles/storage.objectViewer", "roles/storage.objectAdmin", "roles/storage.objectCreator",
               "roles/storage.legacyBucketReader", "roles/storage.legacyBucketOwner",
               "roles/storage.legacyBucketWriter", "roles/storage.bucketViewer", "roles/storage.admin"),
    T_MODEL: ("roles/ml.modelOwner", "roles/ml.modelUser", "roles/ml.viewer", "roles/ml.developer"),
    T_SA: ("roles/iam.serviceAccountUser", "roles/iam.serviceAccountTokenCreator",
           "roles/iam.serviceAccountAdmin", "roles/iam.serviceAccountViewer",
           "roles/iam.serviceAccountOpenIdTokenCreator"),
}
WEAK_TYPE_ROLES: dict[str, tuple[str, ...]] = {
    T_BUCKET: ("roles/storage.objectViewer", "roles/storage.legacyBucketReader", "roles/storage.bucketViewer"),
    T_MODEL: ("roles/ml.modelUser",),
    T_SA: ("roles/iam.serviceAccountViewer",),
}

ALLOW_CLASSES = (
    "direct_resource", "direct_parent", "direct_ancestor",
    "group_resource", "group_parent", "group_ancestor",
    "domain", "all_authenticated", "all_users", "condition_true", "custom_role",
    "deny_exception", "deny_condition_false",
)
DENY_CLASSES = ("no_grant", "deny_override", "condition_false", "disabled_role")

TIME_TRUE = ('request.time < timestamp("2030-01-01T00:00:00Z")', 'request.time > timestamp("2026-03-01T00:00:00Z")')
TIME_FALSE = ('request.time < timestamp("2026-01-01T00:00:00Z")', 'request.time > timestamp("2027-01-01T00:00:00Z")')


# ------------------------------------------------------------------------------------ roles
def _read_shared_roles() -> list[dict[str, Any]]:
    with open(SHARED_ROLES, encoding="utf-8") as f:
        data: list[dict[str, Any]] = json.load(f)
    return data


@cache
def builtin_catalog() -> tuple[dict[str, Any], ...]:
    """keycard's built-in predefined roles; before that lands, the shared catalog restricted
    to keycard's services (the rule docs/ROLES.md states)."""
    try:
        from keycard.catalog import builtin_roles

        return tuple(builtin_roles())
    except Exception:
        pass
    out = []
    for r in _read_shared_roles():
        perms = [p for p in r.get("includedPermissions", []) if p.split(".", 1)[0] in SERVICES]
        if r["name"].split("/")[1].split(".")[0] in SERVICES or r["name"] in (
                "roles/owner", "roles/editor", "roles/viewer", "roles/browser"):
            out.append({**r, "includedPermissions": perms})
    return tuple(out)


@cache
def full_catalog() -> tuple[dict[str, Any], ...]:
    """The real catalog (2,387 roles), read from ../shared at run time."""
    return tuple(_read_shared_roles())


def catalog_for(scale_full: bool) -> list[dict[str, Any]]:
    """The predefined roles every engine sees: built-in, plus (large) the full catalog."""
    roles = {r["name"]: r for r in builtin_catalog()}
    if scale_full:
        for r in full_catalog():
            roles[r["name"]] = r
    return list(roles.values())


# ------------------------------------------------------------------------------------ workload
@dataclass
class Workload:
    scale: str
    seed: int
    time: datetime
    groups: dict[str, list[str]]
    roles: list[dict[str, Any]]                     # custom roles
    deny_policies: list[dict[str, Any]]
    queries: list[tuple[str, str, str, str]]
    meta: list[dict[str, Any]]
    write_tests: list[dict[str, Any]]
    full_catalog: bool
    stats: dict[str, Any] = field(default_factory=dict)
    assets_path: Path | None = None
    _assets: list[dict[str, Any]] | None = None

    @property
    def assets(self) -> list[dict[str, Any]]:
        if self._assets is None:
            assert self.assets_path is not None
            with open(self.assets_path, encoding="utf-8") as f:
                self._assets = [json.loads(line) for line in f if line.strip()]
        return self._assets

    @property
    def catalog_roles(self) -> list[dict[str, Any]]:
        return catalog_for(self.full_catalog)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / "assets.ndjson.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for rec in self.assets:
                f.write(json.dumps(rec, separators=(",", ":")))
                f.write("\n")
        os.replace(tmp, directory / "assets.ndjson")
        rest = {
            "generator": GENERATOR_VERSION, "scale": self.scale, "seed": self.seed,
            "time": self.time.isoformat(), "groups": self.groups, "roles": self.roles,
            "deny_policies": self.deny_policies, "queries": self.queries, "meta": self.meta,
            "write_tests": self.write_tests, "full_catalog": self.full_catalog, "stats": self.stats,
        }
        with open(directory / "rest.json.tmp", "w", encoding="utf-8") as f:
            json.dump(rest, f)
        os.replace(directory / "rest.json.tmp", directory / "rest.json")
        self.assets_path = directory / "assets.ndjson"

    @classmethod
    def load(cls, directory: Path) -> Workload:
        with open(directory / "rest.json", encoding="utf-8") as f:
            rest = json.load(f)
        return cls(
            scale=rest["scale"], seed=rest["seed"], time=datetime.fromisoformat(rest["time"]),
            groups=rest["groups"], roles=rest["roles"], deny_policies=rest["deny_policies"],
            queries=[tuple(q) for q in rest["queries"]], meta=rest["meta"],  # type: ignore[misc]
            write_tests=rest["write_tests"], full_catalog=rest["full_catalog"], stats=rest["stats"],
            assets_path=directory / "assets.ndjson",
        )

    @staticmethod
    def cached(directory: Path, scale: str, seed: int, n_queries: int) -> bool:
        try:
            with open(directory / "rest.json", encoding="utf-8") as f:
                head = json.load(f)
        except (OSError, ValueError):
            return False
        return (head.get("generator") == GENERATOR_VERSION and head.get("scale") == scale
                and head.get("seed") == seed
                and (head.get("stats") or {}).get("requested_queries", len(head.get("queries", ()))) == n_queries
                and (directory / "assets.ndjson").exists())


# ------------------------------------------------------------------------------------ generator
class _Gen:
    def __init__(self, scale: str, seed: int) -> None:
        self.scale = scale
        self.seed = seed
        self.n = SCALES[scale]
        self.rng = random.Random(f"keycard-bench/{scale}/{seed}")
        self.full = scale == "large"
        cat = catalog_for(self.full)
        self.role_perms: dict[str, frozenset[str]] = {
            r["name"]: frozenset(r.get("includedPermissions", ())) for r in cat
            if r.get("stage") != "DISABLED" and not r.get("deleted")}
        self.full_role_names = sorted(r["name"] for r in full_catalog()) if self.full else []
        self.catalog_names = sorted(self.role_perms)
        self.records: dict[str, dict[str, Any]] = {}
        self.parent: dict[str, str | None] = {}
        self.children: dict[str, list[str]] = {}
        self.type: dict[str, str] = {}
        self.project_of: dict[str, str] = {}      # node -> its project full name (or None)
        self.pid: dict[str, str] = {}             # project full name -> project id
        self.policies: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
        self.n_bindings = 0
        self.n_cond = 0
        self.n_rules = 0

    # --------------------------------------------------------------------- hierarchy
    def _etag(self) -> str:
        return base64.b64encode(b"\x07\x05" + self.rng.randbytes(6)).decode()

    def _node(self, full: str, atype: str, parent: str | None, ancestors: list[str],
              data: dict[str, Any]) -> None:
        res: dict[str, Any] = {"version": "v1", "discoveryName": atype.split("/")[1], "data": data}
        if parent:
            res["parent"] = parent
        self.records[full] = {"name": full, "assetType": atype, "ancestors": ancestors, "resource": res}
        self.parent[full] = parent
        self.type[full] = atype
        self.children.setdefault(full, [])
        if parent:
            self.children[parent].append(full)

    def _ancestors(self, node: str) -> list[str]:
        """CAI ancestors of a container: itself then its containers, as short names."""
        out = []
        cur: str | None = node
        while cur is not None:
            if cur.startswith(CRM):
                out.append(relative_name(cur))
            cur = self.parent[cur]
        return out

    def hierarchy(self) -> None:
        rng = self.rng
        n_resources = self.n // 5
        n_projects = max(10, n_resources // 10)
        n_folders = max(6, n_projects // 5)
        self._node(ORG, T_ORG, None, ["organizations/" + ORG_NUM],
                   {"name": "organizations/" + ORG_NUM, "displayName": "acme.com",
                    "directoryCustomerId": "C01abcde9", "lifecycleState": "ACTIVE"})
        self.folders: list[str] = []
        fdepth: dict[str, int] = {}
        top = max(2, n_folders // 4)
        for i in range(n_folders):
            if i < top:
                parent = ORG
                d = 1
            else:
                while True:
                    parent = rng.choice(self.folders)
                    if fdepth[parent] < 4:
                        break
                d = fdepth[parent] + 1
            num = str(300000000000 + i * 11 + 7)
            full = CRM + "folders/" + num
            fdepth[full] = d
            self.folders.append(full)
            self.parent[full] = parent
            self._node(full, T_FOLDER, parent, [], {
                "name": "folders/" + num, "displayName": f"folder-{i}", "parent": relative_name(parent),
                "lifecycleState": "ACTIVE"})
            self.records[full]["ancestors"] = self._ancestors(full)
        self.projects: list[str] = []
        for i in range(n_projects):
            parent = rng.choice(self.folders)
            num = str(200000000000 + i * 7 + 13)
            pid = f"kc-proj-{i}"
            full = CRM + "projects/" + num
            self.projects.append(full)
            self.pid[full] = pid
            self.project_of[full] = full
            self._node(full, T_PROJECT, parent, [], {
                "projectId": pid, "projectNumber": num, "name": f"project {i}",
                "parent": {"type": "folder", "id": parent.rsplit("/", 1)[1]}, "lifecycleState": "ACTIVE"})
            self.records[full]["ancestors"] = self._ancestors(full)
        self.buckets: list[str] = []
        self.models: list[str] = []
        self.versions: list[str] = []
        self.sas: list[str] = []
        self.sa_emails: list[str] = []
        per = n_resources / n_projects
        made = 0
        bucket_i = 0
        for pi, proj in enumerate(self.projects):
            remaining_projects = n_projects - pi
            if pi < n_projects - 1:
                k = max(1, round((n_resources - made) / remaining_projects * rng.uniform(0.5, 1.5)))
            else:
                k = max(1, n_resources - made)
            k = min(k, int(per * 3) + 1)
            pid = self.pid[proj]
            anc = self._ancestors(proj)
            m_i = 0
            s_i = 0
            j = 0
            while j < k:
                r = rng.random()
                if r < 0.4:
                    name = f"bkt-{bucket_i}"
                    bucket_i += 1
                    full = f"//storage.googleapis.com/projects/_/buckets/{name}"
                    self._node(full, T_BUCKET, proj, anc, {"name": name, "id": name, "location": "US",
                                                           "projectNumber": proj.rsplit("/", 1)[1]})
                    self.buckets.append(full)
                    j += 1
                elif r < 0.7:
                    mname = f"model_{m_i}"
                    m_i += 1
                    full = f"//ml.googleapis.com/projects/{pid}/models/{mname}"
                    self._node(full, T_MODEL, proj, anc, {"name": f"projects/{pid}/models/{mname}",
                                                          "regions": ["us-central1"]})
                    self.models.append(full)
                    vfull = full + "/versions/v1"
                    self._node(vfull, T_VERSION, full, anc, {"name": f"projects/{pid}/models/{mname}/versions/v1",
                                                             "state": "READY", "isDefault": True})
                    self.versions.append(vfull)
                    self.project_of[vfull] = proj
                    j += 2
                else:
                    email = f"sa-{s_i}@{pid}.iam.gserviceaccount.com"
                    s_i += 1
                    full = f"//iam.googleapis.com/projects/{pid}/serviceAccounts/{email}"
                    self._node(full, T_SA, proj, anc, {
                        "email": email, "name": f"projects/{pid}/serviceAccounts/{email}",
                        "projectId": pid, "uniqueId": str(100000000000000000000 + len(self.sas))})
                    self.sas.append(full)
                    self.sa_emails.append(email)
                    j += 1
                self.project_of[full] = proj
            made += k
        self.containers = [ORG, *self.folders, *self.projects]
        self.policy_nodes = [*self.containers, *self.buckets, *self.models, *self.sas]

    # --------------------------------------------------------------------- principals
    def principals(self) -> None:
        rng = self.rng
        n_users = max(60, self.n // 10)
        n_groups = max(12, self.n // 100)
        self.users = [f"user:u{i}@{rng.choices(DOMAINS, DOMAIN_WEIGHTS)[0]}" for i in range(n_users)]
        self.sa_members = ["serviceAccount:" + e for e in self.sa_emails]
        n3 = max(2, n_groups // 10)
        n2 = max(3, (n_groups * 3) // 10)
        n1 = max(4, n_groups - n2 - n3)
        self.group_level: dict[str, int] = {}
        self.groups: dict[str, list[str]] = {}
        lv1, lv2, lv3 = [], [], []
        gi = 0
        for level, count, bucket in ((1, n1, lv1), (2, n2, lv2), (3, n3, lv3)):
            for _ in range(count):
                dom = "acme.com" if rng.random() < 0.85 else "acme-labs.com"
                g = f"g{gi}-l{level}@{dom}"
                gi += 1
                bucket.append(g)
                self.group_level[g] = level
        for g in lv1:
            mem = set()
            for _ in range(rng.randint(3, 12)):
                if self.sa_members and rng.random() < 0.2:
                    mem.add(rng.choice(self.sa_members))
                else:
                    mem.add(rng.choice(self.users))
            self.groups[g] = sorted(mem)
        for g in lv2:
            mem = {"group:" + x for x in rng.sample(lv1, min(len(lv1), rng.randint(2, 4)))}
            mem.update(rng.choice(self.users) for _ in range(rng.randint(0, 2)))
            self.groups[g] = sorted(mem)
        for g in lv3:
            mem = {"group:" + x for x in rng.sample(lv2, min(len(lv2), rng.randint(2, 3)))}
            mem.update(rng.choice(self.users) for _ in range(rng.randint(0, 1)))
            self.groups[g] = sorted(mem)
        self.group_names = [*lv1, *lv2, *lv3]
        self.users_by_domain: dict[str, list[str]] = {d: [] for d in DOMAINS}
        for u in self.users:
            self.users_by_domain[u.rsplit("@", 1)[1]].append(u)

    def paths_into(self, group: str) -> list[tuple[str, int]]:
        """(principal, nesting depth) for every user/SA reachable inside ``group``."""
        out: list[tuple[str, int]] = []
        stack = [(group, 1)]
        seen = set()
        while stack:
            g, d = stack.pop()
            if g in seen:
                continue
            seen.add(g)
            for m in self.groups.get(g, ()):
                if m.startswith("group:"):
                    stack.append((m[6:], d + 1))
                else:
                    out.append((m, d))
        return out

    # --------------------------------------------------------------------- roles
    def custom_roles(self) -> None:
        rng = self.rng
        self.custom: list[dict[str, Any]] = []
        self.custom_ga_org: list[str] = []
        self.custom_disabled_org: list[str] = []
        self.custom_by_project: dict[str, list[tuple[str, bool]]] = {}
        org_defs = [
            ("bucketReader", "GA", ["storage.buckets.get", "storage.objects.get", "storage.objects.list"]),
            ("mlPredictor", "GA", ["ml.models.get", "ml.models.predict", "ml.versions.get", "ml.versions.predict"]),
            ("saImpersonator", "GA", ["iam.serviceAccounts.actAs", "iam.serviceAccounts.getAccessToken",
                                      "iam.serviceAccounts.get"]),
            ("folderAuditor", "GA", ["resourcemanager.folders.get", "resourcemanager.folders.list",
                                     "resourcemanager.projects.get", "resourcemanager.projects.list"]),
            ("legacyOps", "DISABLED", ["storage.buckets.delete", "storage.objects.delete", "ml.models.delete",
                                       "ml.versions.delete", "iam.serviceAccounts.delete",
                                       "resourcemanager.projects.delete", "storage.buckets.update"]),
            ("retiredDeployer", "DISABLED", ["ml.models.update", "ml.versions.create", "ml.versions.update",
                                             "storage.objects.create", "iam.serviceAccounts.actAs"]),
        ]
        for rid, stage, perms in org_defs:
            name = f"organizations/{ORG_NUM}/roles/{rid}"
            self.custom.append({"name": name, "title": rid, "description": f"custom role {rid}",
                                "includedPermissions": sorted(perms), "stage": stage, "etag": self._etag(),
                                "deleted": False})
            (self.custom_ga_org if stage == "GA" else self.custom_disabled_org).append(name)
        n_proj_roles = max(3, len(self.projects) // 20)
        for proj in rng.sample(self.projects, min(len(self.projects), n_proj_roles)):
            pid = self.pid[proj]
            for rid, stage, perms in (
                ("projectAuditor", "GA", ["resourcemanager.projects.get", "storage.buckets.list",
                                          "ml.models.list", "iam.serviceAccounts.list", "logging.logEntries.list",
                                          "storage.buckets.get", "ml.models.get", "iam.serviceAccounts.get"]),
                ("frozenWriter", "DISABLED", ["storage.objects.create", "storage.objects.delete",
                                              "ml.models.update", "ml.versions.delete",
                                              "iam.serviceAccounts.signBlob"]),
            ):
                name = f"projects/{pid}/roles/{rid}"
                self.custom.append({"name": name, "title": rid, "description": f"custom role {rid}",
                                    "includedPermissions": sorted(perms), "stage": stage, "etag": self._etag(),
                                    "deleted": False})
                self.custom_by_project.setdefault(proj, []).append((name, stage == "GA"))
        self.all_role_perms = dict(self.role_perms)
        self.dead_perms: dict[str, frozenset[str]] = {}
        for r in self.custom:
            if r["stage"] == "GA":
                self.all_role_perms[r["name"]] = frozenset(r["includedPermissions"])
            else:
                self.dead_perms[r["name"]] = frozenset(r["includedPermissions"])

    # --------------------------------------------------------------------- bindings
    def _member(self, node_type: str) -> str:
        rng = self.rng
        r = rng.random()
        leaf = node_type in LEAF_TYPES
        if r < 0.42:
            return rng.choice(self.users)
        if r < 0.54 and self.sa_members:
            return rng.choice(self.sa_members)
        if r < 0.88:
            return "group:" + rng.choice(self.group_names)
        if r < 0.94:
            return "domain:" + rng.choice(DOMAINS)
        if r < 0.98:
            return "allAuthenticatedUsers"
        return "allUsers" if leaf else rng.choice(self.users)

    def _role_for(self, node: str, member: str) -> str:
        rng = self.rng
        t = self.type[node]
        public = member.startswith("domain:") or member in ("allUsers", "allAuthenticatedUsers")
        r = rng.random()
        if r < 0.04:      # custom roles: org-level anywhere, project-level within their project
            proj = self.project_of.get(node)
            opts = list(self.custom_ga_org) + list(self.custom_disabled_org)
            if proj is not None:
                opts += [n for n, _ in self.custom_by_project.get(proj, ())]
            return rng.choice(opts)
        if t in LEAF_TYPES:
            pool = WEAK_TYPE_ROLES[t] if public else TYPE_ROLES[t]
            return rng.choice([x for x in pool if x in self.role_perms])
        if public:
            return rng.choice([x for x in WEAK_CONTAINER_ROLES if x in self.role_perms])
        if self.full and r < 0.15:
            return rng.choice(self.full_role_names)
        if r < 0.12:
            return rng.choice(self.catalog_names)
        while True:
            role = rng.choices(CONTAINER_ROLES, CONTAINER_WEIGHTS)[0]
            if role in self.role_perms:
                return role

    def _condition(self, node: str) -> dict[str, str]:
        rng = self.rng
        t = self.type[node]
        r = rng.random()
        if r < 0.6 or t in (T_ORG, T_FOLDER, T_SA):
            expr = rng.choice(TIME_TRUE if rng.random() < 0.55 else TIME_FALSE)
            title = "time window"
        else:
            if t == T_PROJECT:
                kids = [c for c in self.children[node] if self.type[c] in (T_BUCKET, T_MODEL)]
                target = rng.choice(kids) if kids else node
            elif rng.random() < 0.6:
                target = node
            else:
                target = rng.choice(self.buckets if t == T_BUCKET else self.models)
            rel = relative_name(target)
            prefix = rel[:-1] if rel[-1].isdigit() and rng.random() < 0.5 else rel
            expr = f'resource.name.startsWith("{prefix}")'
            title = "name prefix"
        return {"title": title, "expression": expr}

    def _add_binding(self, node: str, role: str, members: list[str], cond: dict[str, str] | None) -> bool:
        pol = self.policies.setdefault(node, {})
        key = (role, cond["expression"] if cond else "")
        b = pol.get(key)
        if b is not None:
            for m in members:
                if m not in b["members"]:
                    b["members"].append(m)
            return False
        b = {"role": role, "members": list(dict.fromkeys(members))}
        if cond:
            b["condition"] = cond
        pol[key] = b
        self.n_bindings += 1
        return True

    def bindings(self) -> None:
        rng = self.rng
        n = self.n
        org_target = min(60, max(6, n // 1000))
        folder_target = max(20, n // 50)
        project_target = max(150, (n * 18) // 100)
        leaves = [*self.buckets, *self.models, *self.sas]
        plan = [(ORG, org_target, None), (None, folder_target, self.folders),
                (None, project_target, self.projects)]
        placed = 0
        for fixed, target, pool in plan:
            c = 0
            tries = 0
            while c < target and tries < target * 50:
                tries += 1
                node = fixed or rng.choice(pool)  # type: ignore[arg-type]
                if self._random_binding(node):
                    c += 1
            placed += target
        while self.n_bindings < n:
            self._random_binding(rng.choice(leaves))

    def _random_binding(self, node: str) -> bool:
        rng = self.rng
        t = self.type[node]
        k = rng.choices((1, 2, 3, 4), (55, 25, 12, 8))[0]
        first = self._member(t)
        members = [first]
        public = first.startswith("domain:") or first in ("allUsers", "allAuthenticatedUsers")
        for _ in range(k - 1):
            m = self._member(t)
            pub = m.startswith("domain:") or m in ("allUsers", "allAuthenticatedUsers")
            if pub == public:
                members.append(m)
        role = self._role_for(node, first)
        cond = None
        if rng.random() < 0.05 and self.n_cond < 0.05 * (self.n_bindings + 1):
            cond = self._condition(node)
        added = self._add_binding(node, role, members, cond)
        if added and cond:
            self.n_cond += 1
        return added

    # --------------------------------------------------------------------- deny
    def deny(self) -> None:
        rng = self.rng
        self.deny_policies: list[dict[str, Any]] = []
        self.rule_info: list[tuple[dict[str, Any], str]] = []   # (deny rule, the node whose grant it targets)
        n_folder = max(2, len(self.folders) // 10)
        n_project = max(3, len(self.projects) // 25)
        attach = [ORG, ORG, *rng.sample(self.folders, min(n_folder, len(self.folders))),
                  *rng.sample(self.projects, min(n_project, len(self.projects)))]
        for i, a in enumerate(attach):
            rules = [r for r in (self._deny_rule(a) for _ in range(rng.randint(1, 2))) if r]
            if not rules:
                continue
            pol_rules = [{"description": f"rule {j}", "denyRule": r} for j, r in enumerate(rules)]
            short = relative_name(a)
            att = "cloudresourcemanager.googleapis.com/" + short
            pid = f"deny-{i}"
            self.deny_policies.append({
                "attachmentPoint": att,
                "policy": {
                    "name": f"policies/{att.replace('/', '%2F')}/denypolicies/{pid}",
                    "uid": f"{rng.getrandbits(64):020d}", "kind": "DenyPolicy",
                    "displayName": f"deny policy {i}", "etag": self._etag(), "rules": pol_rules,
                },
            })

    def _subtree_bindings(self, att: str) -> list[tuple[str, dict[str, Any]]]:
        out = []
        stack = [att]
        budget = 400
        while stack and budget > 0:
            node = stack.pop()
            budget -= 1
            for b in self.policies.get(node, {}).values():
                if "condition" not in b and b["role"] in self.all_role_perms:
                    out.append((node, b))
            kids = self.children.get(node, [])
            if len(kids) > 20:
                kids = self.rng.sample(kids, 20)
            stack.extend(kids)
        return out

    def _deny_rule(self, att: str) -> dict[str, Any] | None:
        rng = self.rng
        cands = self._subtree_bindings(att)
        rng.shuffle(cands)
        for node, b in cands[:50]:
            perms = sorted(self.all_role_perms[b["role"]] & set(ALL_QUERY_PERMS))
            if not perms:
                continue
            denied = rng.sample(perms, min(len(perms), rng.randint(1, 3)))
            m = rng.choice(b["members"])
            rule: dict[str, Any] = {}
            if m.startswith("user:"):
                rule["deniedPrincipals"] = ["principal://goog/subject/" + m[5:]]
            elif m.startswith("serviceAccount:"):
                rule["deniedPrincipals"] = ["principal://iam.googleapis.com/projects/-/serviceAccounts/" + m[15:]]
            elif m.startswith("group:") and rng.random() < 0.5:
                rule["deniedPrincipals"] = ["principalSet://goog/group/" + m[6:]]
            else:
                rule["deniedPrincipals"] = ["principalSet://goog/public:all"]
                exc = m[6:] if m.startswith("group:") else rng.choice(self.group_names)
                rule["exceptionPrincipals"] = ["principalSet://goog/group/" + exc]
                if rng.random() < 0.3:
                    rule["exceptionPrincipals"].append("principal://goog/subject/" + rng.choice(self.users)[5:])
            rule["deniedPermissions"] = [v1_to_v2_permission(p) for p in denied]
            if len(denied) >= 2 and rng.random() < 0.3:
                rule["exceptionPermissions"] = [v1_to_v2_permission(denied[-1])]
            self.n_rules += 1
            if self.n_rules % 5 in (2, 4):   # every 5th rule has a true, every 5th a false denial condition
                expr = rng.choice(TIME_TRUE if self.n_rules % 5 == 2 else TIME_FALSE)
                rule["denialCondition"] = {"title": "time window", "expression": expr}
            self.rule_info.append((rule, node))
            return rule
        return None

    # --------------------------------------------------------------------- assets
    def finish_assets(self) -> list[dict[str, Any]]:
        for node, pol in self.policies.items():
            self.records[node]["iamPolicy"] = {"version": 3, "bindings": list(pol.values()), "etag": self._etag()}
        return list(self.records.values())


# ------------------------------------------------------------------------------------ queries
class _Queries:
    def __init__(self, g: _Gen, wl: Workload, ref: Any) -> None:
        self.g = g
        self.wl = wl
        self.ref = ref
        self.rng = random.Random(f"keycard-bench/queries/{g.scale}/{g.seed}")
        self.bl: list[tuple[str, dict[str, Any]]] = [
            (node, b) for node, pol in g.policies.items() for b in pol.values()]
        self.by_kind: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for node, b in self.bl:
            for k in self._kinds(node, b):
                self.by_kind.setdefault(k, []).append((node, b))

    def _kinds(self, node: str, b: dict[str, Any]) -> Iterator[str]:
        g = self.g
        if "condition" in b:
            yield "conditional"
            return
        role = b["role"]
        if role in g.dead_perms:
            yield "disabled"
            return
        if role.startswith(("organizations/", "projects/")):
            yield "custom"
        kinds = {m.split(":", 1)[0] if ":" in m else m for m in b["members"]}
        yield from kinds

    def depth(self, node: str) -> int:
        d = 0
        cur: str | None = node
        while cur is not None:
            d += 1
            cur = self.g.parent[cur]
        return d

    def descendant(self, node: str, min_dist: int) -> str | None:
        cur = node
        dist = 0
        while True:
            kids = self.g.children.get(cur, [])
            if not kids or (dist >= min_dist and self.rng.random() < 0.4):
                return cur if dist >= min_dist else None
            cur = self.rng.choice(kids)
            dist += 1

    def perm_for(self, role_perms: frozenset[str], target: str) -> str | None:
        opts = [p for p in TYPE_PERMS[self.g.type[target]] if p in role_perms]
        return self.rng.choice(opts) if opts else None

    def principal_for(self, member: str) -> tuple[str, int] | None:
        rng = self.rng
        g = self.g
        if member.startswith(("user:", "serviceAccount:")):
            return member, 0
        if member.startswith("group:"):
            paths = g.paths_into(member[6:])
            return rng.choice(paths) if paths else None
        if member.startswith("domain:"):
            us = g.users_by_domain.get(member[7:], [])
            return (rng.choice(us), 0) if us else None
        pool = g.users + g.sa_members
        return rng.choice(pool), 0

    def role_perms(self, role: str) -> frozenset[str]:
        return self.g.all_role_perms.get(role) or self.g.dead_perms.get(role, frozenset())

    def from_binding(self, kinds: tuple[str, ...], min_dist: int, max_dist: int | None,
                     member_kinds: tuple[str, ...] | None = None) -> tuple[str, str, str, int] | None:
        pool: list[tuple[str, dict[str, Any]]] = []
        for k in kinds:
            pool = self.by_kind.get(k, [])
            if pool:
                break
        if not pool:
            return None
        node, b = self.rng.choice(pool)
        target = self.descendant(node, min_dist)
        if target is None:
            return None
        if max_dist is not None and self.depth(target) - self.depth(node) > max_dist:
            return None
        perm = self.perm_for(self.role_perms(b["role"]), target)
        if perm is None:
            return None
        members = [m for m in b["members"] if member_kinds is None or
                   (m.split(":", 1)[0] if ":" in m else m) in member_kinds]
        if not members:
            return None
        pr = self.principal_for(self.rng.choice(members))
        if pr is None:
            return None
        return pr[0], perm, target, pr[1]

    def candidate(self, cls: str) -> tuple[str, str, str, int] | None:
        rng = self.rng
        g = self.g
        if cls == "direct_resource":
            return self.from_binding(("user", "serviceAccount"), 0, 0, ("user", "serviceAccount"))
        if cls == "direct_parent":
            return self.from_binding(("user", "serviceAccount"), 1, 1, ("user", "serviceAccount"))
        if cls == "direct_ancestor":
            return self.from_binding(("user", "serviceAccount"), 2, None, ("user", "serviceAccount"))
        if cls == "group_resource":
            return self.from_binding(("group",), 0, 0, ("group",))
        if cls == "group_parent":
            return self.from_binding(("group",), 1, 1, ("group",))
        if cls == "group_ancestor":
            return self.from_binding(("group",), 2, None, ("group",))
        if cls == "domain":
            return self.from_binding(("domain",), 0, None, ("domain",))
        if cls == "all_authenticated":
            return self.from_binding(("allAuthenticatedUsers",), 0, None, ("allAuthenticatedUsers",))
        if cls == "all_users":
            return self.from_binding(("allUsers",), 0, None, ("allUsers",))
        if cls in ("condition_true", "condition_false"):
            return self.from_binding(("conditional",), 0, None)
        if cls == "custom_role":
            return self.from_binding(("custom",), 0, None)
        if cls == "disabled_role":
            return self.from_binding(("disabled",), 0, None)
        if cls in ("deny_override", "deny_exception", "deny_condition_false"):
            infos = g.rule_info
            if cls == "deny_exception":
                infos = [x for x in infos if x[0].get("exceptionPrincipals") or x[0].get("exceptionPermissions")]
            elif cls == "deny_condition_false":
                infos = [x for x in infos if x[0].get("denialCondition")]
            if not infos:
                return None
            rule, seed = rng.choice(infos)
            target = self.descendant(seed, 0)
            if target is None:
                return None
            # a principal the rule names (or excepts), a permission it denies
            if cls == "deny_exception" and rule.get("exceptionPrincipals"):
                src = rng.choice(rule["exceptionPrincipals"])
            else:
                src = rng.choice(rule["deniedPrincipals"])
            from bench.model import v2_to_v1_member, v2_to_v1_permission
            member = v2_to_v1_member(src)
            if member == "allUsers":
                pr = self.principal_for("allAuthenticatedUsers")
            else:
                pr = self.principal_for(member)
            if pr is None:
                return None
            perms = [v2_to_v1_permission(p) for p in rule["deniedPermissions"]]
            perms = [p for p in perms if p in TYPE_PERMS[g.type[target]]]
            if not perms:
                return None
            return pr[0], rng.choice(perms), target, pr[1]
        if cls == "no_grant":
            target = rng.choice(g.policy_nodes + g.versions)
            pool = g.users if rng.random() < 0.8 else (g.sa_members or g.users)
            return rng.choice(pool), rng.choice(TYPE_PERMS[g.type[target]]), target, 0
        raise ValueError(cls)

    def accept(self, cls: str, q: tuple[str, str, str]) -> bool:
        ref = self.ref
        ok = ref.check(*q)
        if cls in ALLOW_CLASSES:
            if not ok:
                return False
            if cls == "condition_true":
                return not ref.allowed_by_bindings(*q, skip_conditional=True)
            if cls == "deny_exception":
                return "deny_exception" in ref.features(*q) and ref.allowed_by_bindings(*q)
            if cls == "deny_condition_false":
                return "deny_condition" in ref.features(*q)
            return True
        if ok:
            return False
        if cls == "no_grant":
            return not ref.allowed_by_bindings(*q, conds_true=True, enable_disabled=True)
        if cls == "deny_override":
            return ref.allowed_by_bindings(*q)
        if cls == "condition_false":
            return ref.allowed_by_bindings(*q, conds_true=True) and not ref.denied(*q)
        if cls == "disabled_role":
            return ref.allowed_by_bindings(*q, enable_disabled=True) and not ref.denied(*q)
        return False

    def make(self, n: int) -> tuple[list[tuple[str, str, str, str]], list[dict[str, Any]], dict[str, int]]:
        weights = {c: 1.0 / (2 * len(ALLOW_CLASSES)) for c in ALLOW_CLASSES}
        weights.update({c: 1.0 / (2 * len(DENY_CLASSES)) for c in DENY_CLASSES})
        targets = {c: max(2, round(n * w)) for c, w in weights.items()}
        # fill up / trim to exactly n
        diff = n - sum(targets.values())
        targets["no_grant"] += diff
        out: dict[str, list[tuple[tuple[str, str, str], int]]] = {c: [] for c in targets}
        shortfall: dict[str, int] = {}
        seen: set[tuple[str, str, str]] = set()
        for cls, want in targets.items():
            tries = 0
            while len(out[cls]) < want and tries < want * 300:
                tries += 1
                c = self.candidate(cls)
                if c is None:
                    continue
                q = (c[0], c[1], c[2])
                if q in seen or not self.accept(cls, q):
                    continue
                seen.add(q)
                out[cls].append((q, c[3]))
            if len(out[cls]) < want:
                shortfall[cls] = want - len(out[cls])
        # classes that came up short are topped up with no_grant / generic allowed picks
        flat: list[tuple[tuple[str, str, str], int, str]] = [
            (q, gd, cls) for cls, lst in out.items() for (q, gd) in lst]
        self.rng.shuffle(flat)
        queries = []
        meta = []
        for q, gd, cls in flat:
            queries.append((q[0], q[1], q[2], cls))
            meta.append({"depth": self.depth(q[2]), "gdepth": gd, "expected": cls in ALLOW_CLASSES,
                         "features": sorted(self.ref.features(*q))})
        return queries, meta, shortfall

    def write_tests(self, queries: list[tuple[str, str, str, str]], k: int = 20) -> list[dict[str, Any]]:
        g = self.g
        out = []
        used: set[str] = set()
        query_resources = {q[2] for q in queries}
        for p, perm, res, cls in queries:
            if cls != "no_grant" or g.type[res] == T_VERSION or res in used or self.ref.denied(p, perm, res):
                continue
            # the smallest GA predefined role holding the permission
            roles = sorted((len(ps), r) for r, ps in g.role_perms.items() if perm in ps and r.startswith("roles/"))
            if not roles:
                continue
            role = roles[0][1]
            pol = [dict(b) for b in g.policies.get(res, {}).values()]
            pol.append({"role": role, "members": [p]})
            used.add(res)
            out.append({"resource": res, "principal": p, "permission": perm, "role": role,
                        "policy": {"version": 3, "bindings": pol, "etag": g._etag()},
                        "shared_with_queries": res in query_resources})
            if len(out) >= k:
                break
        return out


def generate(scale: str, seed: int = 7, n_queries: int = 4000) -> Workload:
    from bench.peers import naive

    g = _Gen(scale, seed)
    g.hierarchy()
    g.principals()
    g.custom_roles()
    g.bindings()
    g.deny()
    assets = g.finish_assets()
    wl = Workload(
        scale=scale, seed=seed, time=FIXED_TIME, groups=g.groups, roles=g.custom,
        deny_policies=g.deny_policies, queries=[], meta=[], write_tests=[], full_catalog=g.full,
        _assets=assets,
    )
    ref = naive.build(wl)
    qs = _Queries(g, wl, ref)
    wl.queries, wl.meta, shortfall = qs.make(n_queries)
    wl.write_tests = qs.write_tests(wl.queries)
    n_members = sum(len(b["members"]) for pol in g.policies.values() for b in pol.values())
    wl.stats = {
        "bindings": g.n_bindings, "binding_members": n_members, "resources": len(assets),
        "organizations": 1, "folders": len(g.folders), "projects": len(g.projects),
        "buckets": len(g.buckets), "models": len(g.models), "versions": len(g.versions),
        "service_accounts": len(g.sas), "users": len(g.users), "groups": len(g.groups),
        "custom_roles": len(g.custom), "deny_policies": len(g.deny_policies),
        "deny_rules": sum(len(d["policy"]["rules"]) for d in g.deny_policies),
        "conditional_bindings": sum(1 for pol in g.policies.values() for b in pol.values() if "condition" in b),
        "predefined_roles": len(g.role_perms), "queries": len(wl.queries),
        "allowed_queries": sum(1 for m in wl.meta if m["expected"]), "class_shortfall": shortfall,
        "requested_queries": n_queries,      # a scale may make fewer distinct queries: what the cache is keyed on
    }
    return wl
