"""Every ml v1 method × {admin, developer, viewer, modelOwner, modelUser, jobOwner, no role} against the
permission table (issue 5): the method is refused with 403 naming its permission exactly when the role,
granted where it applies (project roles on the project, model roles on the model, jobOwner on the job),
lacks that permission.

The oracle is independent of the engine: the roles' permission lists read from the built-in catalog and
the permission each method needs per ROLES.md / API.md. Each call goes through the real service function;
a refusal is PermissionDenied naming the permission; anything else (success, or a later 4xx such as the
deliberately invalid bodies used for mutating calls) means authorization let it through.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from keycard.catalog import builtin_roles
from keycard.errors import KeycardError, PermissionDenied
from keycard.server import init_installation, open_services
from keycard.services import ml_jobs, ml_models, ml_versions
from keycard.services import resourcemanager as crm
from keycard.services.common import Caller, Services
from keycard.store.base import Put
from keycard.store.sql import open_store

ADMIN = "user:root@example.com"
P = "perm-proj-1"
ML = "//ml.googleapis.com/projects/perm-proj-1"
PRINCIPALS = {  # who → (role, where it is granted: "project" | "model" | "job" | None)
    "admin": ("roles/ml.admin", "project"),
    "developer": ("roles/ml.developer", "project"),
    "viewer": ("roles/ml.viewer", "project"),
    "modelOwner": ("roles/ml.modelOwner", "model"),
    "modelUser": ("roles/ml.modelUser", "model"),
    "jobOwner": ("roles/ml.jobOwner", "job"),
    "none": (None, None),
}

Call = Callable[[Services, Caller], Any]
# method → (permission(s) any of which suffices, the resource it is checked on, the call)
METHODS: dict[str, tuple[tuple[str, ...], str, Call]] = {
    "projects.getConfig": (("ml.projects.getConfig",), "project", lambda s, c: ml_models.get_config(s, c, P)),
    "models.create": (("ml.models.create",), "project",
                      lambda s, c: ml_models.create_model(s, c, P, {"name": "bad name"})),
    "models.list": (("ml.models.list",), "project", lambda s, c: ml_models.list_models(s, c, P, {})),
    "models.get": (("ml.models.get",), "model", lambda s, c: ml_models.get_model(s, c, P, "m")),
    "models.patch": (("ml.models.update",), "model",
                     lambda s, c: ml_models.patch_model(s, c, P, "m", {}, "bogusField")),
    "models.delete": (("ml.models.delete",), "model", lambda s, c: ml_models.delete_model(s, c, P, "m")),
    "models.getIamPolicy": (("ml.models.getIamPolicy",), "model",
                            lambda s, c: ml_models.get_policy(s, c, P, "models", "m", 1)),
    "models.setIamPolicy": (("ml.models.setIamPolicy",), "model",
                            lambda s, c: ml_models.set_policy(s, c, P, "models", "m", {}, False)),
    "versions.create": (("ml.versions.create",), "model",
                        lambda s, c: ml_versions.create_version(s, c, P, "m", {"name": "bad name"})),
    "versions.list": (("ml.versions.list",), "model", lambda s, c: ml_versions.list_versions(s, c, P, "m", {})),
    "versions.get": (("ml.versions.get",), "model",
                     lambda s, c: ml_versions.get_version(s, c, P, "m", "v1")),
    "versions.patch": (("ml.versions.update",), "model",
                       lambda s, c: ml_versions.patch_version(s, c, P, "m", "v1", {}, "bogusField")),
    "versions.delete": (("ml.versions.delete",), "model",
                        lambda s, c: ml_versions.delete_version(s, c, P, "m", "v1")),
    "versions.setDefault": (("ml.models.update",), "model",
                            lambda s, c: ml_versions.set_default(s, c, P, "m", "v1")),
    "predict (model)": (("ml.models.predict",), "model",
                        lambda s, c: ml_versions.prepare_predict(s, c, P, "m", None, {"instances": [[1]]})()),
    "predict (version)": (("ml.versions.predict", "ml.models.predict"), "model",
                          lambda s, c: ml_versions.prepare_predict(s, c, P, "m", "v1", {"instances": [[1]]})()),
    "jobs.create": (("ml.jobs.create",), "project",
                    lambda s, c: ml_jobs.create_job(s, c, P, {"jobId": "bad id"}, keys=lambda: None,
                                                    base_url="http://127.0.0.1:1")),
    "jobs.list": (("ml.jobs.list",), "project", lambda s, c: ml_jobs.list_jobs(s, c, P, {})),
    "jobs.get": (("ml.jobs.get",), "job", lambda s, c: ml_jobs.get_job(s, c, P, "j")),
    "jobs.patch": (("ml.jobs.update",), "job", lambda s, c: ml_jobs.patch_job(s, c, P, "j", {}, "bogusField")),
    "jobs.cancel": (("ml.jobs.cancel",), "job", lambda s, c: ml_jobs.cancel_job(s, c, P, "j")),
    "jobs.getIamPolicy": (("ml.jobs.getIamPolicy",), "job",
                          lambda s, c: ml_models.get_policy(s, c, P, "jobs", "j", 1)),
    "jobs.setIamPolicy": (("ml.jobs.setIamPolicy",), "job",
                          lambda s, c: ml_models.set_policy(s, c, P, "jobs", "j", {}, False)),
    "operations.list": (("ml.operations.list",), "project", lambda s, c: ml_models.list_operations(s, c, P, {})),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    d: Path = tmp_path_factory.mktemp("mlperm")
    url = f"sqlite:///{d / 'k.db'}"
    store = open_store(url)
    inst = init_installation(store, domain="example.com", admins=[ADMIN])
    store.close()
    svc, _keys, store = open_services(url)
    root = Caller(ADMIN)
    crm.create_project(svc, root, {"projectId": P, "parent": inst.organization.split("/", 3)[3]})
    project_full = crm.resolve_project(svc, P)
    ml_models.create_model(svc, root, P, {"name": "m"})
    ml_versions.create_version(svc, root, P, "m", {"name": "v1", "deploymentUri": "gs://no-such-bucket/x/",
                                                   "framework": "SCIKIT_LEARN"})
    ml_versions.create_version(svc, root, P, "m", {"name": "v2", "deploymentUri": "gs://no-such-bucket/x/",
                                                   "framework": "SCIKIT_LEARN"})
    # a job that exists (written directly: the runner is not under test here), already finished
    job = f"{ML}/jobs/j"
    store.commit([Put("resource", job, {"jobId": "j", "state": "FAILED", "createTime": "2026-01-01T00:00:00Z",
                                        "predictionInput": {}}, parent=project_full)])
    grants: dict[str, list[dict[str, Any]]] = {"project": [], "model": [], "job": []}
    for who, (role, where) in PRINCIPALS.items():
        if role is not None and where is not None:
            grants[where].append({"role": role, "members": [f"user:{who.lower()}@example.com"]})
    for where, name in (("model", f"{ML}/models/m"), ("job", job)):
        current = store.get("iam_policy", name)
        bindings = list(current.data.get("bindings", [])) if current else []
        store.commit([Put("iam_policy", name, {"version": 1, "bindings": bindings + grants[where]})])
    proj_policy = store.get("iam_policy", project_full)
    assert proj_policy is not None
    store.commit([Put("iam_policy", project_full, {**proj_policy.data, "bindings": [
        *proj_policy.data.get("bindings", []), *grants["project"]]})])
    svc.runtime.catch_up()
    yield svc
    svc.runtime.stop()
    store.close()


ROLE_PERMISSIONS = {r["name"]: set(r["includedPermissions"]) for r in builtin_roles()}


def _expected(who: str, permissions: tuple[str, ...], on: str) -> bool:
    role, where = PRINCIPALS[who]
    if role is None or where is None:
        return False
    covers = where == "project" or where == on         # project roles reach everything below the project
    perms = ROLE_PERMISSIONS[role] if covers else set()
    return any(p in perms for p in permissions)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("who", sorted(PRINCIPALS))
def test_method_matches_the_permission_table(world: Services, method: str, who: str) -> None:
    permissions, on, call = METHODS[method]
    caller = Caller(f"user:{who.lower()}@example.com")
    try:
        call(world, caller)
        refused = None
    except PermissionDenied as e:
        refused = e
    except KeycardError:
        refused = None           # past authorization: the call failed for its (deliberately bad) input
    expected = _expected(who, permissions, on)
    assert (refused is None) == expected, (method, who, permissions, refused and refused.message)
    if refused is not None:
        assert refused.metadata.get("permission") in permissions
