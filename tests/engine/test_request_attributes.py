"""Engine.check(attributes=...): request.path and request.host reach IAM Conditions (what IAP exposes)."""

from __future__ import annotations

import datetime as dt

import pytest

from keycard import Engine, names

PROJECT = "//cloudresourcemanager.googleapis.com/projects/iap-proj"
SERVICE = "//iap.googleapis.com/projects/iap-proj/iap_web/compute/services/api"
ACCESS = "iap.webServiceVersions.accessViaIAP"
ALICE = "user:alice@example.com"
T = dt.datetime(2026, 1, 5, 10, 0, tzinfo=dt.UTC)


@pytest.fixture()
def engine() -> Engine:
    return Engine.load([{"name": PROJECT, "asset_type": "cloudresourcemanager.googleapis.com/Project"}])


def _grant(e: Engine, node: str, expression: str | None) -> None:
    b: dict[str, object] = {"role": "roles/iap.httpsResourceAccessor", "members": [ALICE]}
    if expression:
        b["condition"] = {"title": "c", "expression": expression}
    e.set_iam_policy(node, {"version": 3, "bindings": [b]})


def test_iap_names_sit_under_their_project(engine: Engine) -> None:
    assert engine.ancestry(SERVICE) == [SERVICE, PROJECT]          # placed by its name, no create call
    _grant(engine, SERVICE, None)                                  # a policy makes it (and its parents) nodes
    assert engine.ancestry(SERVICE) == [SERVICE, "//iap.googleapis.com/projects/iap-proj/iap_web/compute",
                                        "//iap.googleapis.com/projects/iap-proj/iap_web", PROJECT]
    assert names.parse_resource(SERVICE).type == "iap.googleapis.com/WebService"
    assert names.parse_resource(SERVICE + "/versions/v1").type == "iap.googleapis.com/WebServiceVersion"


@pytest.mark.parametrize(("path", "allowed"), [("/predict", True), ("/predict/v1", True), ("/admin", False)])
def test_a_path_condition_sees_request_path(engine: Engine, path: str, allowed: bool) -> None:
    _grant(engine, SERVICE, 'request.path.startsWith("/predict")')
    d = engine.check(ALICE, ACCESS, SERVICE, time=T, attributes={"request.path": path, "request.host": "h"})
    assert d.allowed is allowed


def test_a_grant_on_the_project_is_inherited_with_its_condition(engine: Engine) -> None:
    _grant(engine, PROJECT, 'request.host == "models.example.com" && request.path == "/"')
    assert engine.check(ALICE, ACCESS, SERVICE, time=T,
                        attributes={"request.path": "/", "request.host": "models.example.com"}).allowed
    assert not engine.check(ALICE, ACCESS, SERVICE, time=T,
                            attributes={"request.path": "/", "request.host": "evil.example.com"}).allowed


def test_without_the_attribute_the_condition_errors_and_grants_nothing(engine: Engine) -> None:
    _grant(engine, SERVICE, 'request.path.startsWith("/predict")')
    d = engine.check(ALICE, ACCESS, SERVICE, time=T)
    assert not d.allowed
    assert d.conditions and d.conditions[0].error and "request.path" in d.conditions[0].error


def test_a_denial_condition_sees_request_path(engine: Engine) -> None:
    _grant(engine, SERVICE, None)
    engine.set_deny_policy("cloudresourcemanager.googleapis.com/projects/iap-proj", {"name": "no-admin", "rules": [
        {"denyRule": {"deniedPrincipals": ["principalSet://goog/public:all"],
                      "deniedPermissions": ["iap.googleapis.com/webServiceVersions.accessViaIAP"],
                      "denialCondition": {"title": "admin", "expression": 'request.path.startsWith("/admin")'}}}]})
    assert engine.check(ALICE, ACCESS, SERVICE, time=T, attributes={"request.path": "/predict"}).allowed
    assert not engine.check(ALICE, ACCESS, SERVICE, time=T, attributes={"request.path": "/admin/x"}).allowed
