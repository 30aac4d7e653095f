"""A small built-in organization that shows the engine's answers (``keycard demo``)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from keycard.engine.engine import Engine

CRM = "//cloudresourcemanager.googleapis.com"
ORG = f"{CRM}/organizations/100000000001"
FOLDER = f"{CRM}/folders/200000000002"
PROJECT = f"{CRM}/projects/300000000003"
MODEL = "//ml.googleapis.com/projects/ml-prod/models/churn"
JOB = "//ml.googleapis.com/projects/ml-prod/jobs/train_churn_7"
BUCKET = "//storage.googleapis.com/projects/_/buckets/ml-prod-models"
TIME = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)


def demo_inputs() -> dict[str, Any]:
    """Cloud-Asset-Inventory-shaped records, groups and deny policies of the demo organization."""
    assets: list[dict[str, Any]] = [
        {"name": ORG, "assetType": "cloudresourcemanager.googleapis.com/Organization",
         "ancestors": ["organizations/100000000001"],
         "iamPolicy": {"version": 1, "bindings": [
             {"role": "roles/resourcemanager.organizationAdmin", "members": ["user:alice@example.com"]},
             {"role": "roles/browser", "members": ["domain:example.com"]}]}},
        {"name": FOLDER, "assetType": "cloudresourcemanager.googleapis.com/Folder",
         "ancestors": ["folders/200000000002", "organizations/100000000001"]},
        {"name": PROJECT, "assetType": "cloudresourcemanager.googleapis.com/Project",
         "ancestors": ["projects/300000000003", "folders/200000000002", "organizations/100000000001"],
         "resource": {"data": {"projectId": "ml-prod", "projectNumber": "300000000003"}},
         "iamPolicy": {"version": 3, "bindings": [
             {"role": "roles/ml.developer", "members": ["group:ml-team@example.com"]},
             {"role": "roles/viewer", "members": ["user:auditor@partner.org"],
              "condition": {"title": "until end of 2026",
                            "expression": 'request.time < timestamp("2027-01-01T00:00:00Z")'}}]}},
        {"name": MODEL, "assetType": "ml.googleapis.com/Model",
         "ancestors": ["projects/300000000003", "folders/200000000002", "organizations/100000000001"],
         "iamPolicy": {"version": 1, "bindings": [
             {"role": "roles/ml.modelOwner", "members": ["user:bob@example.com"]}]}},
        {"name": JOB, "assetType": "ml.googleapis.com/Job",
         "ancestors": ["projects/300000000003", "folders/200000000002", "organizations/100000000001"],
         "iamPolicy": {"version": 1, "bindings": [
             {"role": "roles/ml.jobOwner", "members": ["user:bob@example.com"]}]}},
        {"name": BUCKET, "assetType": "storage.googleapis.com/Bucket",
         "ancestors": ["projects/300000000003", "folders/200000000002", "organizations/100000000001"],
         "resource": {"parent": PROJECT}},
    ]
    groups = {"ml-team@example.com": ["group:ml-juniors@example.com", "user:bob@example.com"],
              "ml-juniors@example.com": ["user:carol@example.com"]}
    deny = [{"attachmentPoint": "cloudresourcemanager.googleapis.com/organizations/100000000001",
             "policy": {"name": "protect-models", "displayName": "Only release managers delete models",
                        "rules": [{"denyRule": {
                            "deniedPrincipals": ["principalSet://goog/public:all"],
                            "exceptionPrincipals": ["principalSet://goog/group/release@example.com"],
                            "deniedPermissions": ["ml.googleapis.com/models.delete"]}}]}}]
    return {"assets": assets, "groups": groups, "deny_policies": deny}


DEMO_QUERIES: list[tuple[str | None, str, str]] = [
    ("user:carol@example.com", "ml.jobs.create", PROJECT),
    ("user:carol@example.com", "ml.jobs.cancel", JOB),
    ("user:bob@example.com", "ml.jobs.cancel", JOB),
    ("user:bob@example.com", "ml.models.delete", MODEL),
    ("user:auditor@partner.org", "ml.models.get", MODEL),
    (None, "storage.objects.get", BUCKET + "/objects/churn/model.joblib"),
]


def demo_engine() -> Engine:
    return Engine.load(**demo_inputs())
