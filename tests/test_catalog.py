"""The built-in catalog of predefined roles, held to Google Cloud's definitions (docs/ROLES.md)."""

from __future__ import annotations

import json
from collections import Counter
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from keycard.catalog import SERVICES, builtin_permissions, builtin_roles

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_ROLES = REPO_ROOT / ".." / "shared" / "data" / "gcp-iam" / "roles.json"

REQUIRED_ROLES: tuple[str, ...] = (
    # Basic
    "roles/owner",
    "roles/editor",
    "roles/viewer",
    "roles/browser",
    # AI Platform
    "roles/ml.admin",
    "roles/ml.developer",
    "roles/ml.viewer",
    "roles/ml.modelOwner",
    "roles/ml.modelUser",
    "roles/ml.jobOwner",
    "roles/ml.operationOwner",
    "roles/ml.serviceAgent",
    # IAM
    "roles/iam.serviceAccountUser",
    "roles/iam.serviceAccountAdmin",
    "roles/iam.serviceAccountCreator",
    "roles/iam.serviceAccountDeleter",
    "roles/iam.serviceAccountViewer",
    "roles/iam.serviceAccountKeyAdmin",
    "roles/iam.serviceAccountTokenCreator",
    "roles/iam.serviceAccountOpenIdTokenCreator",
    "roles/iam.roleAdmin",
    "roles/iam.roleViewer",
    "roles/iam.organizationRoleAdmin",
    "roles/iam.organizationRoleViewer",
    "roles/iam.securityAdmin",
    "roles/iam.securityReviewer",
    "roles/iam.denyAdmin",
    "roles/iam.denyReviewer",
    "roles/iam.workloadIdentityUser",
    "roles/iam.workloadIdentityPoolAdmin",
    "roles/iam.workloadIdentityPoolViewer",
    # Resource Manager
    "roles/resourcemanager.organizationAdmin",
    "roles/resourcemanager.organizationViewer",
    "roles/resourcemanager.folderAdmin",
    "roles/resourcemanager.folderCreator",
    "roles/resourcemanager.folderEditor",
    "roles/resourcemanager.folderIamAdmin",
    "roles/resourcemanager.folderMover",
    "roles/resourcemanager.folderViewer",
    "roles/resourcemanager.projectCreator",
    "roles/resourcemanager.projectDeleter",
    "roles/resourcemanager.projectIamAdmin",
    "roles/resourcemanager.projectMover",
    # Storage
    "roles/storage.admin",
    "roles/storage.objectAdmin",
    "roles/storage.objectCreator",
    "roles/storage.objectUser",
    "roles/storage.objectViewer",
    "roles/storage.bucketViewer",
    "roles/storage.legacyBucketOwner",
    "roles/storage.legacyBucketReader",
    "roles/storage.legacyBucketWriter",
    "roles/storage.legacyObjectOwner",
    "roles/storage.legacyObjectReader",
    # Logging
    "roles/logging.viewer",
    "roles/logging.privateLogViewer",
    "roles/logging.admin",
    # IAP
    "roles/iap.httpsResourceAccessor",
    "roles/iap.settingsAdmin",
    "roles/iap.viewer",
    # Org policy
    "roles/orgpolicy.policyAdmin",
    "roles/orgpolicy.policyViewer",
    # Cloud Asset Inventory
    "roles/cloudasset.viewer",
    "roles/cloudasset.owner",
    # Recommender (IAM recommendations) and Policy Simulator
    "roles/recommender.iamViewer",
    "roles/recommender.iamAdmin",
    "roles/policysimulator.admin",
    "roles/policysimulator.viewer",
)

BASIC_ROLES = ("roles/owner", "roles/editor", "roles/viewer", "roles/browser")
YAML_FILES = (
    "basic.yaml",
    "ml.yaml",
    "iam.yaml",
    "resourcemanager.yaml",
    "storage.yaml",
    "logging.yaml",
    "iap.yaml",
    "orgpolicy.yaml",
    "cloudasset.yaml",
    "recommender.yaml",
    "policysimulator.yaml",
    "keycard.yaml",
)
# keycard's own roles (roles/keycard.*): not Google's, so exempt from the SERVICES and roles.json checks
KEYCARD_FILES = ("keycard.yaml",)
STAGES = {"ALPHA", "BETA", "GA", "DEPRECATED", "DISABLED", "EAP"}


def _service(permission: str) -> str:
    return permission.split(".", 1)[0]


def _by_name() -> dict[str, dict[str, Any]]:
    return {role["name"]: role for role in builtin_roles()}


def _perms(name: str) -> set[str]:
    return set(_by_name()[name]["includedPermissions"])


@cache
def _google_roles() -> dict[str, dict[str, Any]]:
    try:
        with SHARED_ROLES.open(encoding="utf-8") as fh:
            data: list[dict[str, Any]] = json.load(fh)
    except FileNotFoundError as exc:
        pytest.skip(f"../shared/data/gcp-iam/roles.json not found: {exc}")
    return {role["name"]: role for role in data}


# ---------------------------------------------------------------------------- structure


def test_every_required_role_is_built_in() -> None:
    missing = sorted(set(REQUIRED_ROLES) - _by_name().keys())
    assert not missing, f"roles listed in ROLES.md but not built in: {missing}"


def test_required_list_has_no_duplicates() -> None:
    assert len(set(REQUIRED_ROLES)) == len(REQUIRED_ROLES)


@pytest.mark.parametrize("filename", YAML_FILES)
def test_yaml_file_shape(filename: str) -> None:
    text = resources.files("keycard.catalog").joinpath("roles", filename).read_text(encoding="utf-8")
    roles = yaml.safe_load(text)
    assert isinstance(roles, list) and roles, f"{filename}: expected a non-empty YAML list"
    names = [role["name"] for role in roles]
    dupes = sorted(name for name, n in Counter(names).items() if n > 1)
    assert not dupes, f"{filename}: duplicate role names {dupes}"
    for role in roles:
        assert set(role) == {"name", "title", "description", "stage", "includedPermissions"}, role["name"]
        assert role["name"].startswith("roles/"), role["name"]
        assert isinstance(role["title"], str) and role["title"], role["name"]
        assert isinstance(role["description"], str), role["name"]
        assert role["stage"] in STAGES, role["name"]
        perms = role["includedPermissions"]
        assert isinstance(perms, list) and all(isinstance(p, str) for p in perms), role["name"]
        assert perms == sorted(perms), f"{role['name']}: includedPermissions not sorted"
        assert len(perms) == len(set(perms)), f"{role['name']}: duplicate permissions"
        if filename in KEYCARD_FILES:
            assert role["name"].startswith("roles/keycard."), role["name"]
            continue
        outside = sorted(p for p in perms if _service(p) not in SERVICES)
        assert not outside, f"{role['name']}: permissions outside SERVICES: {outside}"


def test_role_names_unique_across_files() -> None:
    names = [role["name"] for role in builtin_roles()]
    dupes = sorted(name for name, n in Counter(names).items() if n > 1)
    assert not dupes, f"roles defined more than once: {dupes}"


def test_builtin_roles_returns_fresh_copies() -> None:
    first = builtin_roles()
    first[0]["includedPermissions"].append("tampered.permission")
    first.pop()
    second = builtin_roles()
    assert "tampered.permission" not in second[0]["includedPermissions"]
    assert len(second) == len(first) + 1


def test_builtin_permissions_is_union() -> None:
    union = {p for role in builtin_roles() for p in role["includedPermissions"]}
    assert builtin_permissions() == frozenset(union)


# ---------------------------------------------------------------------------- Google's definitions


@pytest.mark.parametrize("name", REQUIRED_ROLES)
def test_role_matches_google(name: str) -> None:
    google = _google_roles()
    assert name in google, f"{name} is not a Google Cloud predefined role"
    expected = {p for p in google[name].get("includedPermissions", []) if _service(p) in SERVICES}
    role = _by_name()[name]
    actual = set(role["includedPermissions"])
    missing = sorted(expected - actual)
    extra = sorted(actual - expected)
    assert not missing and not extra, (
        f"{name}: {len(actual)} built-in vs {len(expected)} in Google's definition (restricted to SERVICES)\n"
        + "".join(f"  - missing: {p}\n" for p in missing)
        + "".join(f"  + extra:   {p}\n" for p in extra)
    )
    assert role["title"] == google[name]["title"], name
    assert role["stage"] == google[name]["stage"], name


# ---------------------------------------------------------------------------- ROLES.md's facts


def test_viewer_can_predict_but_ml_viewer_cannot() -> None:
    predict = {"ml.models.predict", "ml.versions.predict"}
    assert predict <= _perms("roles/viewer")
    assert not predict & _perms("roles/ml.viewer")


def test_editor_has_ml_admin_except_set_iam_policy() -> None:
    wanted = {p for p in _perms("roles/ml.admin") if not p.endswith(".setIamPolicy")}
    missing = sorted(wanted - _perms("roles/editor"))
    assert not missing, f"roles/editor lacks roles/ml.admin permissions: {missing}"
    set_policy = {p for p in _perms("roles/ml.admin") if p.endswith(".setIamPolicy")}
    assert set_policy, "roles/ml.admin should hold setIamPolicy permissions"
    assert not set_policy & _perms("roles/editor")


def test_only_owner_can_set_project_iam_policy() -> None:
    holders = [name for name in BASIC_ROLES if "resourcemanager.projects.setIamPolicy" in _perms(name)]
    assert holders == ["roles/owner"]


def test_ml_developer_predicts_but_cannot_cancel_others_jobs() -> None:
    dev = _perms("roles/ml.developer")
    assert {
        "ml.jobs.create",
        "ml.jobs.get",
        "ml.jobs.list",
        "ml.models.predict",
        "ml.versions.predict",
    } <= dev
    assert "ml.jobs.cancel" not in dev
    assert "ml.jobs.cancel" in _perms("roles/ml.admin")


def test_ml_model_owner() -> None:
    owner = _perms("roles/ml.modelOwner")
    assert {
        "ml.models.get",
        "ml.models.delete",
        "ml.models.update",
        "ml.models.predict",
        "ml.models.getIamPolicy",
        "ml.models.setIamPolicy",
        "ml.versions.get",
        "ml.versions.list",
        "ml.versions.predict",
        "ml.versions.delete",
        "ml.versions.update",
    } <= owner
    assert all(p.startswith(("ml.models.", "ml.versions.")) for p in owner), sorted(owner)


def test_ml_model_user() -> None:
    assert _perms("roles/ml.modelUser") == {
        "ml.models.get",
        "ml.models.predict",
        "ml.versions.get",
        "ml.versions.list",
        "ml.versions.predict",
    }


def test_ml_job_owner() -> None:
    owner = _perms("roles/ml.jobOwner")
    assert {"ml.jobs.get", "ml.jobs.getIamPolicy", "ml.jobs.cancel"} <= owner
    assert all(p.startswith("ml.jobs.") for p in owner), sorted(owner)


def test_ml_operation_owner() -> None:
    owner = _perms("roles/ml.operationOwner")
    assert {"ml.operations.get", "ml.operations.cancel"} <= owner
    assert all(p.startswith("ml.operations.") for p in owner), sorted(owner)


def test_ml_service_agent_reads_model_files() -> None:
    assert {"storage.buckets.list", "storage.objects.get"} <= _perms("roles/ml.serviceAgent")
