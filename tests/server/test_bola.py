"""BOLA/BFLA matrix: for every API method, a principal without the permission gets 403 PERMISSION_DENIED
naming the permission, and the same answer whether or not the resource exists.

The matrix is driven by the route table (``keycard.http.routes.register``): every route must have a case
below or be listed in ``SKIPPED`` with the reason, so a new route cannot slip past it. Each case is a
request with placeholders (``{PROJECT}``, ``{GROUP}``…); the admin creates the real objects first, and
each swap replaces one placeholder by a name of the same shape that names nothing. The stranger
(authenticated, no grants anywhere) sends both, and the two answers must be identical once the two names
are exchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from conftest import Server
from keycard.http import routes
from keycard.http.routing import Route, Router

STRANGER = "mallory@example.com"
ATT = "cloudresourcemanager.googleapis.com%2Fprojects%2F{PROJECT}"
DISCUSSION = {"cloudidentity.googleapis.com/groups.discussion_forum": ""}
DENY_RULE = {"denyRule": {"deniedPrincipals": ["principalSet://goog/public:all"],
                          "deniedPermissions": ["cloudresourcemanager.googleapis.com/projects.delete"]}}
BOB_TUPLE = {"accessTuple": {"principal": "user:bob@example.com",
                             "fullResourceName": "//cloudresourcemanager.googleapis.com/projects/{PROJECT}",
                             "permission": "resourcemanager.projects.get"}}


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    swaps: tuple[str, ...]                      # placeholders replaced, one at a time, by a missing name
    query: dict[str, str] = field(default_factory=dict)
    body: Any = None
    # "denied": 403 PERMISSION_DENIED naming the permission. "same": the stranger's answer does not depend
    # on existence and leaks nothing (filtered searches, catalog queries, the caller's own operations).
    expect: str = "denied"


_SET_POLICY_SA = {"policy": {"bindings": [{"role": "roles/iam.serviceAccountTokenCreator",
                                            "members": ["user:mallory@example.com"]}]}}

# Routes not in the matrix, and why.
SKIPPED = {
    "iam.roles.list": "predefined roles are a public catalog, readable by anyone (with parent=, it is "
                      "iam.projects.roles.list / iam.organizations.roles.list, covered below)",
    "iam.roles.get": "predefined roles are a public catalog, readable by anyone",
    "keycard.jwks": "public: the token-signing public keys",
    "sts.token": "public: the subject token is the credential (RFC 8693); its rejections are "
                 "test_workload_identity.py's forgery corpus",
    **{op: "public: the OAuth2 token endpoint authenticates the signed assertion it is sent (tests/server/"
           "test_forgery.py)" for op in ("oauth2.token", "oauth2.v4.token")},
    **{op: "public: tokeninfo describes only the token it is given, which must verify"
       for op in ("oauth2.tokeninfo", "oauth2.tokeninfo.get", "oauth2.v3.tokeninfo", "oauth2.v3.tokeninfo.post")},
    **{op: "public, as Google's: OpenID discovery and service accounts' public key certificates"
       for op in ("keycard.openidConfiguration", "keycard.serviceAccountCertificates", "keycard.serviceAccountJwks")},
}

CASES: dict[str, Case] = {
    # ------------------------------------------------------------------------- resource manager
    "cloudresourcemanager.organizations.search": Case(
        "GET", "/v3/organizations:search", ("ORG",), query={"query": "name:organizations/{ORG}"}, expect="same"),
    "cloudresourcemanager.organizations.get": Case("GET", "/v3/organizations/{ORG}", ("ORG",)),
    "cloudresourcemanager.folders.search": Case(
        "GET", "/v3/folders:search", ("FOLDER",), query={"query": "name:folders/{FOLDER}"}, expect="same"),
    "cloudresourcemanager.projects.search": Case(
        "GET", "/v3/projects:search", ("PROJECT",), query={"query": "projectId:{PROJECT}"}, expect="same"),
    "cloudresourcemanager.folders.list": Case("GET", "/v3/folders", ("FOLDER",), query={"parent": "folders/{FOLDER}"}),
    "cloudresourcemanager.projects.list": Case("GET", "/v3/projects", ("FOLDER",),
                                               query={"parent": "folders/{FOLDER}"}),
    "cloudresourcemanager.folders.create": Case("POST", "/v3/folders", ("FOLDER",),
                                                body={"parent": "folders/{FOLDER}", "displayName": "mallory"}),
    "cloudresourcemanager.projects.create": Case("POST", "/v3/projects", ("FOLDER",),
                                                 body={"projectId": "mallory-proj", "parent": "folders/{FOLDER}"}),
    "cloudresourcemanager.folders.get": Case("GET", "/v3/folders/{FOLDER}", ("FOLDER",)),
    "cloudresourcemanager.folders.patch": Case("PATCH", "/v3/folders/{FOLDER}", ("FOLDER",),
                                               query={"updateMask": "displayName"}, body={"displayName": "pwned"}),
    "cloudresourcemanager.projects.get": Case("GET", "/v3/projects/{PROJECT}", ("PROJECT",)),
    "cloudresourcemanager.projects.patch": Case("PATCH", "/v3/projects/{PROJECT}", ("PROJECT",),
                                                query={"updateMask": "displayName"}, body={"displayName": "pwned"}),
    "cloudresourcemanager.operations.get": Case("GET", "/v3/operations/{CRMOP}", ("CRMOP",), expect="same"),
    # --------------------------------------------------------------------- custom roles, catalog
    "iam.roles.queryGrantableRoles": Case(
        "POST", "/v1/roles:queryGrantableRoles", ("PROJECT",),
        body={"fullResourceName": "//cloudresourcemanager.googleapis.com/projects/{PROJECT}"}, expect="same"),
    "iam.permissions.queryTestablePermissions": Case(
        "POST", "/v1/permissions:queryTestablePermissions", ("PROJECT",),
        body={"fullResourceName": "//cloudresourcemanager.googleapis.com/projects/{PROJECT}"}, expect="same"),
    # ------------------------------------------------------------------------------ deny policies
    "iam.policies.operations.get": Case(
        "GET", f"/v2/policies/{ATT}/denypolicies/{{DENY}}/operations/{{DENYOP}}", ("PROJECT", "DENY", "DENYOP")),
    "iam.policies.createPolicy": Case("POST", f"/v2/policies/{ATT}/denypolicies", ("PROJECT",),
                                      query={"policyId": "mallory-deny"}, body={"rules": [DENY_RULE]}),
    "iam.policies.listPolicies": Case("GET", f"/v2/policies/{ATT}/denypolicies", ("PROJECT",)),
    "iam.policies.get": Case("GET", f"/v2/policies/{ATT}/denypolicies/{{DENY}}", ("PROJECT", "DENY")),
    "iam.policies.update": Case("PUT", f"/v2/policies/{ATT}/denypolicies/{{DENY}}", ("PROJECT", "DENY"),
                                body={"rules": [DENY_RULE]}),
    "iam.policies.delete": Case("DELETE", f"/v2/policies/{ATT}/denypolicies/{{DENY}}", ("PROJECT", "DENY")),
    # ------------------------------------------------------------------------------------ groups
    "cloudidentity.groups.lookup": Case("GET", "/v1/groups:lookup", ("GEMAIL",), query={"groupKey.id": "{GEMAIL}"}),
    "cloudidentity.groups.create": Case(
        "POST", "/v1/groups", ("CUSTOMER",), query={"initialGroupConfig": "EMPTY"},
        body={"groupKey": {"id": "mallory-team@example.com"}, "parent": "customers/{CUSTOMER}",
              "labels": DISCUSSION}),
    "cloudidentity.groups.list": Case("GET", "/v1/groups", ("CUSTOMER",), query={"parent": "customers/{CUSTOMER}"}),
    "cloudidentity.groups.get": Case("GET", "/v1/groups/{GROUP}", ("GROUP",)),
    "cloudidentity.groups.patch": Case("PATCH", "/v1/groups/{GROUP}", ("GROUP",),
                                       query={"updateMask": "displayName"}, body={"displayName": "pwned"}),
    "cloudidentity.groups.delete": Case("DELETE", "/v1/groups/{GROUP}", ("GROUP",)),
    "cloudidentity.groups.memberships.lookup": Case(
        "GET", "/v1/groups/{GROUP}/memberships:lookup", ("GROUP", "MEMAIL"), query={"memberKey.id": "{MEMAIL}"}),
    "cloudidentity.groups.memberships.create": Case(
        "POST", "/v1/groups/{GROUP}/memberships", ("GROUP",),
        body={"preferredMemberKey": {"id": STRANGER}, "roles": [{"name": "MEMBER"}]}),
    "cloudidentity.groups.memberships.list": Case("GET", "/v1/groups/{GROUP}/memberships", ("GROUP",)),
    "cloudidentity.groups.memberships.get": Case("GET", "/v1/groups/{GROUP}/memberships/{MEMBERSHIP}",
                                                 ("GROUP", "MEMBERSHIP")),
    "cloudidentity.groups.memberships.delete": Case("DELETE", "/v1/groups/{GROUP}/memberships/{MEMBERSHIP}",
                                                    ("GROUP", "MEMBERSHIP")),
    # ----------------------------------------------------------------------------- troubleshooter
    # Anyone may troubleshoot their own access, so the tuple names someone else.
    "policytroubleshooter.iam.troubleshoot": Case("POST", "/v1/iam:troubleshoot", ("PROJECT",), body=BOB_TUPLE),
    "policytroubleshooter.iam.v3.troubleshoot": Case("POST", "/v3/iam:troubleshoot", ("PROJECT",), body=BOB_TUPLE),
}

# ---------------------------------------------------------------------------- service accounts and keys
_SA = "/v1/projects/{PROJECT}/serviceAccounts"
_ONE_SA = _SA + "/{SAEMAIL}"
_SAO = "iam.projects.serviceAccounts"
CASES.update({
    f"{_SAO}.create": Case("POST", _SA, ("PROJECT",), body={"accountId": "mallory-sa"}),
    f"{_SAO}.list": Case("GET", _SA, ("PROJECT",)),
    f"{_SAO}.get": Case("GET", _ONE_SA, ("SAEMAIL", "PROJECT")),
    f"{_SAO}.patch": Case("PATCH", _ONE_SA, ("SAEMAIL",), body={"serviceAccount": {"displayName": "pwned"},
                                                                "updateMask": "displayName"}),
    f"{_SAO}.delete": Case("DELETE", _ONE_SA, ("SAEMAIL",)),
    f"{_SAO}.disable": Case("POST", _ONE_SA + ":disable", ("SAEMAIL",), body={}),
    f"{_SAO}.enable": Case("POST", _ONE_SA + ":enable", ("SAEMAIL",), body={}),
    f"{_SAO}.undelete": Case("POST", _SA + "/{SAUID}:undelete", ("SAUID", "PROJECT"), body={}),
    f"{_SAO}.getIamPolicy": Case("POST", _ONE_SA + ":getIamPolicy", ("SAEMAIL",), body={}),
    f"{_SAO}.setIamPolicy": Case("POST", _ONE_SA + ":setIamPolicy", ("SAEMAIL",), body=_SET_POLICY_SA),
    f"{_SAO}.testIamPermissions": Case("POST", _ONE_SA + ":testIamPermissions", ("SAEMAIL",),
                                       body={"permissions": ["iam.serviceAccounts.get"]}, expect="same"),
    f"{_SAO}.keys.create": Case("POST", _ONE_SA + "/keys", ("SAEMAIL",), body={}),
    f"{_SAO}.keys.upload": Case("POST", _ONE_SA + "/keys:upload", ("SAEMAIL",), body={"publicKeyData": "eA=="}),
    f"{_SAO}.keys.list": Case("GET", _ONE_SA + "/keys", ("SAEMAIL",)),
    f"{_SAO}.keys.get": Case("GET", _ONE_SA + "/keys/{SAKEY}", ("SAEMAIL", "SAKEY")),
    f"{_SAO}.keys.delete": Case("DELETE", _ONE_SA + "/keys/{SAKEY}", ("SAEMAIL", "SAKEY")),
    f"{_SAO}.keys.disable": Case("POST", _ONE_SA + "/keys/{SAKEY}:disable", ("SAEMAIL", "SAKEY"), body={}),
    f"{_SAO}.keys.enable": Case("POST", _ONE_SA + "/keys/{SAKEY}:enable", ("SAEMAIL", "SAKEY"), body={}),
})

# ------------------------------------------------------------------------- metadata-server attachments
CASES.update({
    f"{_SAO}.keycardAttachments.create": Case("POST", _ONE_SA + "/keycardAttachments", ("SAEMAIL",), body={}),
    f"{_SAO}.keycardAttachments.list": Case("GET", _ONE_SA + "/keycardAttachments", ("SAEMAIL",)),
    f"{_SAO}.keycardAttachments.delete": Case("DELETE", _ONE_SA + "/keycardAttachments/{ATTACHMENT}",
                                              ("SAEMAIL", "ATTACHMENT")),
})
for _op in ("generateAccessToken", "generateIdToken", "check", "detach"):
    SKIPPED[f"iam.keycardAttachments.{_op}"] = ("public: authenticated by the attachment's secret in the body, "
                                                "not by IAM (tests/server/test_metadata_server.py)")

# ------------------------------------------------------------------------------------------ ml v1
_MLP = "/v1/projects/{PROJECT}"
_MLM = _MLP + "/models/{MODEL}"
_MLV = _MLM + "/versions/{VERSION}"
CASES.update({
    "ml.projects.getConfig": Case("GET", _MLP + ":getConfig", ("PROJECT",)),
    "ml.projects.models.create": Case("POST", _MLP + "/models", ("PROJECT",), body={"name": "mallory_model"}),
    "ml.projects.models.list": Case("GET", _MLP + "/models", ("PROJECT",)),
    "ml.projects.models.get": Case("GET", _MLM, ("MODEL",)),
    "ml.projects.models.patch": Case("PATCH", _MLM, ("MODEL",), query={"updateMask": "description"},
                                     body={"description": "pwned"}),
    "ml.projects.models.delete": Case("DELETE", _MLM, ("MODEL",)),
    "ml.projects.models.getIamPolicy": Case("GET", _MLM + ":getIamPolicy", ("MODEL",)),
    "ml.projects.models.setIamPolicy": Case("POST", _MLM + ":setIamPolicy", ("MODEL",), body={
        "policy": {"bindings": [{"role": "roles/ml.modelOwner", "members": [f"user:{STRANGER}"]}]}}),
    "ml.projects.models.testIamPermissions": Case("POST", _MLM + ":testIamPermissions", ("MODEL",),
                                                  body={"permissions": ["ml.models.get"]}, expect="same"),
    "ml.projects.models.versions.create": Case("POST", _MLM + "/versions", ("MODEL",), body={
        "name": "mallory", "deploymentUri": "gs://bola-bucket-1/x/", "framework": "SCIKIT_LEARN"}),
    "ml.projects.models.versions.list": Case("GET", _MLM + "/versions", ("MODEL",)),
    "ml.projects.models.versions.get": Case("GET", _MLV, ("MODEL", "VERSION")),
    "ml.projects.models.versions.patch": Case("PATCH", _MLV, ("MODEL", "VERSION"),
                                              query={"updateMask": "description"}, body={"description": "pwned"}),
    "ml.projects.models.versions.delete": Case("DELETE", _MLV, ("MODEL", "VERSION")),
    "ml.projects.models.versions.setDefault": Case("POST", _MLV + ":setDefault", ("MODEL", "VERSION"), body={}),
    "ml.projects.predict": Case("POST", _MLM + ":predict", ("MODEL",), body={"instances": [[1]]}),
    "ml.projects.versions.predict": Case("POST", _MLV + ":predict", ("MODEL", "VERSION"),
                                         body={"instances": [[1]]}),
    "ml.projects.operations.list": Case("GET", _MLP + "/operations", ("PROJECT",)),
    "ml.projects.operations.get": Case("GET", _MLP + "/operations/{MLOP}", ("MLOP",)),
    "ml.projects.operations.cancel": Case("POST", _MLP + "/operations/{MLOP}:cancel", ("MLOP",), body={}),
})
_MLJ = _MLP + "/jobs/{JOB}"
_BOLA_JOB = {"dataFormat": "JSON", "inputPaths": ["gs://bola-bucket-1/in.json"], "outputPath": "gs://bola-bucket-1/o",
             "uri": "gs://bola-bucket-1/m/", "framework": "SCIKIT_LEARN"}
CASES.update({
    "ml.projects.jobs.create": Case("POST", _MLP + "/jobs", ("PROJECT",),
                                    body={"jobId": "mallory_job", "predictionInput": _BOLA_JOB}),
    "ml.projects.jobs.list": Case("GET", _MLP + "/jobs", ("PROJECT",)),
    "ml.projects.jobs.get": Case("GET", _MLJ, ("JOB", "PROJECT")),
    "ml.projects.jobs.patch": Case("PATCH", _MLJ, ("JOB", "PROJECT"), query={"updateMask": "labels"},
                                   body={"labels": {"pwned": "yes"}}),
    "ml.projects.jobs.cancel": Case("POST", _MLJ + ":cancel", ("JOB", "PROJECT"), body={}),
    "ml.projects.jobs.keycardLogs": Case("GET", _MLJ + ":keycardLogs", ("JOB", "PROJECT")),
    "ml.projects.jobs.getIamPolicy": Case("GET", _MLJ + ":getIamPolicy", ("JOB",)),
    "ml.projects.jobs.setIamPolicy": Case("POST", _MLJ + ":setIamPolicy", ("JOB",), body={
        "policy": {"bindings": [{"role": "roles/ml.jobOwner", "members": [f"user:{STRANGER}"]}]}}),
    "ml.projects.jobs.testIamPermissions": Case("POST", _MLJ + ":testIamPermissions", ("JOB",),
                                                body={"permissions": ["ml.jobs.get"]}, expect="same"),
})

# ------------------------------------------------------------------------------------- Cloud Storage
_GCS = "/storage/v1/b"
CASES.update({
    "storage.buckets.list": Case("GET", _GCS, ("PROJECT",), query={"project": "{PROJECT}"}),
    "storage.buckets.insert": Case("POST", _GCS, ("PROJECT",), query={"project": "{PROJECT}"},
                                   body={"name": "mallory-bucket"}),
    "storage.buckets.get": Case("GET", _GCS + "/{BUCKET}", ("BUCKET",)),
    "storage.buckets.delete": Case("DELETE", _GCS + "/{BUCKET}", ("BUCKET",)),
    "storage.buckets.getIamPolicy": Case("GET", _GCS + "/{BUCKET}/iam", ("BUCKET",)),
    "storage.buckets.setIamPolicy": Case("PUT", _GCS + "/{BUCKET}/iam", ("BUCKET",), body={
        "bindings": [{"role": "roles/storage.admin", "members": [f"user:{STRANGER}"]}]}),
    "storage.buckets.testIamPermissions": Case("GET", _GCS + "/{BUCKET}/iam/testPermissions", ("BUCKET",),
                                               query={"permissions": "storage.buckets.get"}, expect="same"),
    "storage.objects.list": Case("GET", _GCS + "/{BUCKET}/o", ("BUCKET",)),
    "storage.objects.get": Case("GET", _GCS + "/{BUCKET}/o/{OBJECT}", ("BUCKET", "OBJECT")),
    "storage.objects.delete": Case("DELETE", _GCS + "/{BUCKET}/o/{OBJECT}", ("BUCKET", "OBJECT")),
    "storage.objects.download": Case("GET", "/download/storage/v1/b/{BUCKET}/o/{OBJECT}", ("BUCKET", "OBJECT"),
                                     query={"alt": "media"}),
    "storage.objects.insert": Case("POST", "/upload/storage/v1/b/{BUCKET}/o", ("BUCKET",),
                                   query={"uploadType": "media", "name": "{OBJECT}"}, body={}),
    # a resumable session answers only the principal that started it: another's PUT is the unknown session's 404
    "storage.objects.resumableUpload": Case("PUT", "/upload/storage/v1/b/{BUCKET}/o", ("BUCKET", "UPLOAD"),
                                            query={"uploadType": "resumable", "upload_id": "{UPLOAD}"}, body={},
                                            expect="same"),
})

# ------------------------------------------------------------------------------------ IAM Credentials
# ------------------------------------------------------------- IAP web resources (keycard proxy, issue 7)
# IAP resources need no creation: the name places them under the project, so PROJECT is the swap.
_IAP = "/v1/projects/{PROJECT}/iap_web/compute/services/bola-svc"
_IAP_POLICY = {"policy": {"bindings": [{"role": "roles/iap.httpsResourceAccessor", "members": [f"user:{STRANGER}"]}]}}
for _base, _op in ((_IAP, "iap"), ("/v1/projects/{PROJECT}/iap_web", "iap.web")):
    CASES[f"{_op}.getIamPolicy"] = Case("POST", f"{_base}:getIamPolicy", ("PROJECT",), body={})
    CASES[f"{_op}.setIamPolicy"] = Case("POST", f"{_base}:setIamPolicy", ("PROJECT",), body=_IAP_POLICY)
    CASES[f"{_op}.testIamPermissions"] = Case("POST", f"{_base}:testIamPermissions", ("PROJECT",),
                                              body={"permissions": ["iap.webServiceVersions.accessViaIAP"]},
                                              expect="same")
CASES["iap.keycardCheckAccess"] = Case("POST", f"{_IAP}:keycardCheckAccess", ("PROJECT",),
                                       body={"credential": None, "request": {"path": "/", "host": "h"}})
CASES["iap.keycardRecordAccess"] = Case("POST", f"{_IAP}:keycardRecordAccess", ("PROJECT",), body={"entries": []})


_IC = "/v1/projects/-/serviceAccounts/{SAEMAIL}"
_ICO = "iamcredentials.projects.serviceAccounts"
CASES.update({
    f"{_ICO}.generateAccessToken": Case("POST", _IC + ":generateAccessToken", ("SAEMAIL",),
                                        body={"scope": ["https://www.googleapis.com/auth/cloud-platform"]}),
    f"{_ICO}.generateIdToken": Case("POST", _IC + ":generateIdToken", ("SAEMAIL",), body={"audience": "x"}),
    f"{_ICO}.signJwt": Case("POST", _IC + ":signJwt", ("SAEMAIL",), body={"payload": "{{}}"}),  # str.format escape
    f"{_ICO}.signBlob": Case("POST", _IC + ":signBlob", ("SAEMAIL",), body={"payload": "aGk="}),
})

# ------------------------------------------------------------- organizations' OIDC identity providers
_IDP = "/v1/organizations/{ORG}/keycardIdentityProviders"
_IDPO = "iam.organizations.keycardIdentityProviders"
_IDP_BODY = {"oidc": {"issuerUri": "https://mallory.idp.test", "clientIds": ["m"],
                      "jwksUri": "https://mallory.idp.test/jwks"}}
CASES.update({
    f"{_IDPO}.create": Case("POST", _IDP, ("ORG",), query={"identityProviderId": "mallory-sso"}, body=_IDP_BODY),
    f"{_IDPO}.list": Case("GET", _IDP, ("ORG",)),
    f"{_IDPO}.get": Case("GET", _IDP + "/{IDP}", ("IDP", "ORG")),
    f"{_IDPO}.patch": Case("PATCH", _IDP + "/{IDP}", ("IDP",), query={"updateMask": "displayName"},
                           body={"displayName": "pwned"}),
    f"{_IDPO}.delete": Case("DELETE", _IDP + "/{IDP}", ("IDP",)),
})

# ------------------------------------------------------------------- workload identity pools and providers
_WIP = "/v1/projects/{PROJECT}/locations/global/workloadIdentityPools"
_ONE_WIP = _WIP + "/{POOL}"
_ONE_WIPP = _ONE_WIP + "/providers/{PROV}"
_WIPO = "iam.projects.locations.workloadIdentityPools"
CASES.update({
    f"{_WIPO}.create": Case("POST", _WIP, ("PROJECT",), query={"workloadIdentityPoolId": "mallory-pool"}, body={}),
    f"{_WIPO}.list": Case("GET", _WIP, ("PROJECT",)),
    f"{_WIPO}.get": Case("GET", _ONE_WIP, ("POOL", "PROJECT")),
    f"{_WIPO}.patch": Case("PATCH", _ONE_WIP, ("POOL",), query={"updateMask": "disabled"}, body={"disabled": True}),
    f"{_WIPO}.delete": Case("DELETE", _ONE_WIP, ("POOL",)),
    f"{_WIPO}.undelete": Case("POST", _ONE_WIP + ":undelete", ("POOL",), body={}),
    f"{_WIPO}.operations.get": Case("GET", _ONE_WIP + "/operations/{WIPOP}", ("WIPOP", "POOL")),
    f"{_WIPO}.providers.create": Case("POST", _ONE_WIP + "/providers", ("POOL",),
                                      query={"workloadIdentityPoolProviderId": "mallory-prov"}, body={}),
    f"{_WIPO}.providers.list": Case("GET", _ONE_WIP + "/providers", ("POOL",)),
    f"{_WIPO}.providers.get": Case("GET", _ONE_WIPP, ("PROV", "POOL")),
    f"{_WIPO}.providers.patch": Case("PATCH", _ONE_WIPP, ("PROV",), query={"updateMask": "disabled"},
                                     body={"disabled": True}),
    f"{_WIPO}.providers.delete": Case("DELETE", _ONE_WIPP, ("PROV",)),
    f"{_WIPO}.providers.undelete": Case("POST", _ONE_WIPP + ":undelete", ("PROV",), body={}),
    f"{_WIPO}.providers.operations.get": Case("GET", _ONE_WIPP + "/operations/{WIPPOP}", ("WIPPOP", "PROV")),
})

# Recommender v1, Policy Simulator v1 replays and keycard's lint (ids of the same shape: authorization comes first)
_RECOS = "/v1/projects/{PROJECT}/locations/global/recommenders/google.iam.policy.Recommender/recommendations"
_INSIGHTS = "/v1/projects/{PROJECT}/locations/global/insightTypes/google.iam.policy.Insight/insights"
_REPLAYS = "/v1/projects/{PROJECT}/locations/global/replays"
_RID, _REPLAY = "0123456789abcdef0123456789abcdef", "0123456789abcdef"
CASES.update({
    "recommender.recommendations.list": Case("GET", _RECOS, ("PROJECT",)),
    "recommender.recommendations.get": Case("GET", f"{_RECOS}/{_RID}", ("PROJECT",)),
    **{f"recommender.recommendations.{verb}": Case("POST", f"{_RECOS}/{_RID}:{verb}", ("PROJECT",),
                                                   body={"etag": '"x"'})
       for verb in ("markClaimed", "markSucceeded", "markFailed", "markDismissed")},
    "recommender.insights.list": Case("GET", _INSIGHTS, ("PROJECT",)),
    "recommender.insights.get": Case("GET", f"{_INSIGHTS}/{_RID}", ("PROJECT",)),
    "keycard.iam.lint": Case("GET", "/v1/projects/{PROJECT}:lintIamPolicies", ("PROJECT",)),
    "policysimulator.replays.create": Case("POST", _REPLAYS, ("PROJECT",), body={"config": {"policyOverlay": {
        "//cloudresourcemanager.googleapis.com/projects/{PROJECT}": {}}}}),
    "policysimulator.replays.get": Case("GET", f"{_REPLAYS}/{_REPLAY}", ("PROJECT",)),
    "policysimulator.replays.results.list": Case("GET", f"{_REPLAYS}/{_REPLAY}/results", ("PROJECT",)),
    "policysimulator.replays.operations.get": Case("GET", f"{_REPLAYS}/{_REPLAY}/operations/{_REPLAY}",
                                                   ("PROJECT",)),
    "policysimulator.replays.operations.list": Case("GET", f"{_REPLAYS}/{_REPLAY}/operations", ("PROJECT",)),
})

_SET_POLICY = {"policy": {"bindings": [{"role": "roles/owner", "members": [f"user:{STRANGER}"]}]}}
for _kind, _key in (("organizations", "ORG"), ("folders", "FOLDER"), ("projects", "PROJECT")):
    _node = f"{_kind}/{{{_key}}}"
    _crm = f"cloudresourcemanager.{_kind}"
    CASES[f"{_crm}.getIamPolicy"] = Case("POST", f"/v3/{_node}:getIamPolicy", (_key,), body={})
    CASES[f"{_crm}.setIamPolicy"] = Case("POST", f"/v3/{_node}:setIamPolicy", (_key,), body=_SET_POLICY)
    # testIamPermissions needs no permission: it answers for the caller, so the stranger gets the same empty answer
    CASES[f"{_crm}.testIamPermissions"] = Case("POST", f"/v3/{_node}:testIamPermissions", (_key,),
                                               body={"permissions": [f"resourcemanager.{_kind}.get"]}, expect="same")
    if _kind != "organizations":
        CASES[f"{_crm}.move"] = Case("POST", f"/v3/{_node}:move", (_key,),
                                     body={"destinationParent": "organizations/{ORG}"})
        CASES[f"{_crm}.undelete"] = Case("POST", f"/v3/{_node}:undelete", (_key,), body={})
        CASES[f"{_crm}.delete"] = Case("DELETE", f"/v3/{_node}", (_key,))
    if _kind != "folders":
        _role, _rkey = f"/v1/{_kind}/{{{_key}}}/roles", ("PROLE" if _kind == "projects" else "OROLE")
        _iam = f"iam.{_kind}.roles"
        CASES[f"{_iam}.create"] = Case("POST", _role, (_key,), body={
            "roleId": "malloryRole", "role": {"title": "m", "includedPermissions": ["resourcemanager.projects.get"]}})
        CASES[f"{_iam}.list"] = Case("GET", _role, (_key,))
        CASES[f"{_iam}.undelete"] = Case("POST", f"{_role}/{{{_rkey}}}:undelete", (_key, _rkey), body={})
        CASES[f"{_iam}.get"] = Case("GET", f"{_role}/{{{_rkey}}}", (_key, _rkey))
        CASES[f"{_iam}.patch"] = Case("PATCH", f"{_role}/{{{_rkey}}}", (_key, _rkey), query={"updateMask": "title"},
                                      body={"title": "pwned"})
        CASES[f"{_iam}.delete"] = Case("DELETE", f"{_role}/{{{_rkey}}}", (_key, _rkey))
    _op, _pol = f"orgpolicy.{_kind}", f"/v2/{_node}/policies"
    CASES[f"{_op}.constraints.list"] = Case("GET", f"/v2/{_node}/constraints", (_key,))
    CASES[f"{_op}.policies.create"] = Case("POST", _pol, (_key,), body={
        "name": f"{_node}/policies/iam.disableServiceAccountKeyUpload", "spec": {"rules": [{"enforce": True}]}})
    CASES[f"{_op}.policies.list"] = Case("GET", _pol, (_key,))
    CASES[f"{_op}.policies.getEffectivePolicy"] = Case("GET", f"{_pol}/{{CONSTRAINT}}:getEffectivePolicy",
                                                       (_key, "CONSTRAINT"))
    CASES[f"{_op}.policies.get"] = Case("GET", f"{_pol}/{{CONSTRAINT}}", (_key, "CONSTRAINT"))
    CASES[f"{_op}.policies.patch"] = Case("PATCH", f"{_pol}/{{CONSTRAINT}}", (_key, "CONSTRAINT"), body={
        "name": f"{_node}/policies/{{CONSTRAINT}}", "spec": {"rules": [{"enforce": False}]}})
    CASES[f"{_op}.policies.delete"] = Case("DELETE", f"{_pol}/{{CONSTRAINT}}", (_key, "CONSTRAINT"))

# keycard extension: atomic add/remove of one binding, authorized like setIamPolicy
_BINDING = {"binding": {"role": "roles/viewer", "members": [f"user:{STRANGER}"]}}
for _verb in ("keycardAddIamPolicyBinding", "keycardRemoveIamPolicyBinding"):
    for _kind, _key in (("organizations", "ORG"), ("folders", "FOLDER"), ("projects", "PROJECT")):
        CASES[f"cloudresourcemanager.{_kind}.{_verb}"] = Case("POST", f"/v3/{_kind}/{{{_key}}}:{_verb}", (_key,),
                                                              body=_BINDING)
    CASES[f"{_SAO}.{_verb}"] = Case("POST", f"{_ONE_SA}:{_verb}", ("SAEMAIL",), body={
        "binding": {"role": "roles/iam.serviceAccountTokenCreator", "members": [f"user:{STRANGER}"]}})
    CASES[f"ml.projects.models.{_verb}"] = Case("POST", f"{_MLM}:{_verb}", ("MODEL",), body={
        "binding": {"role": "roles/ml.modelOwner", "members": [f"user:{STRANGER}"]}})
    CASES[f"ml.projects.jobs.{_verb}"] = Case("POST", f"{_MLJ}:{_verb}", ("JOB",), body={
        "binding": {"role": "roles/ml.jobOwner", "members": [f"user:{STRANGER}"]}})
    CASES[f"storage.buckets.{_verb}"] = Case("POST", f"{_GCS}/{{BUCKET}}/iam:{_verb}", ("BUCKET",), body={
        "binding": {"role": "roles/storage.objectViewer", "members": [f"user:{STRANGER}"]}})


# ------------------------------------------------------------------------- Cloud Asset v1, Logging v2
_CAI = "/v1/projects/{PROJECT}"
CASES.update({
    "cloudasset.analyzeIamPolicy": Case("GET", _CAI + ":analyzeIamPolicy", ("PROJECT",), query={
        "analysisQuery.resourceSelector.fullResourceName": "//cloudresourcemanager.googleapis.com/projects/{PROJECT}"}),
    "cloudasset.searchAllIamPolicies": Case("GET", _CAI + ":searchAllIamPolicies", ("PROJECT",),
                                            query={"query": "policy:mallory"}),
    "cloudasset.searchAllResources": Case("GET", _CAI + ":searchAllResources", ("PROJECT",),
                                          query={"query": "name:{PROJECT}"}),
    "cloudasset.exportAssets": Case("POST", _CAI + ":exportAssets", ("PROJECT", "BUCKET"), body={
        "contentType": "RESOURCE", "outputConfig": {"gcsDestination": {"uri": "gs://{BUCKET}/mallory.json"}}}),
    "cloudasset.operations.get": Case("GET", _CAI + "/operations/ExportAssets/{CAIOP}", ("PROJECT", "CAIOP")),
    "logging.entries.list": Case("POST", "/v2/entries:list", ("PROJECT",),
                                 body={"resourceNames": ["projects/{PROJECT}"]}),
})


def _router() -> Router:
    router = Router()
    routes.register(router)
    return router


ROUTES: list[Route] = _router().routes
MATRIX = [pytest.param(r, swap, id=f"{r.operation_id}[{swap}]")
          for r in ROUTES if r.operation_id in CASES for swap in CASES[r.operation_id].swaps]


def _fill(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**names)
    if isinstance(value, dict):
        return {k: _fill(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, names) for v in value]
    return value


def _send(c: httpx.Client, case: Case, names: dict[str, str]) -> httpx.Response:
    kwargs: dict[str, Any] = {"params": _fill(case.query, names)}
    if case.body is not None:
        kwargs["json"] = _fill(case.body, names)
    return c.request(case.method, _fill(case.path, names), **kwargs)


@pytest.fixture(scope="module")
def world(server: Server) -> dict[str, dict[str, str]]:
    """Create one of everything as the admin; return {"existing": names, "missing": same-shape names}."""
    c = server.client()

    def ok(r: httpx.Response) -> Any:
        assert r.status_code == 200, r.text
        return r.json()

    org = server.organization.split("/")[1]
    op = ok(c.post("/v3/folders", json={"parent": server.organization, "displayName": "bola"}))
    folder = op["response"]["name"].split("/")[1]
    crm_op = op["name"].split("/")[1]
    ok(c.post("/v3/projects", json={"projectId": "bola-proj-1", "parent": f"folders/{folder}"}))
    role = {"title": "r", "includedPermissions": ["resourcemanager.projects.get"]}
    ok(c.post("/v1/projects/bola-proj-1/roles", json={"roleId": "bolaRole", "role": role}))
    ok(c.post(f"/v1/organizations/{org}/roles", json={"roleId": "bolaOrgRole", "role": role}))
    deny = ok(c.post("/v2/policies/cloudresourcemanager.googleapis.com%2Fprojects%2Fbola-proj-1/denypolicies",
                     params={"policyId": "bola-deny"}, json={"rules": [DENY_RULE]}))
    deny_op = deny["name"].rsplit("/", 1)[1]
    customer = _customer(server)
    group_op = ok(c.post("/v1/groups", params={"initialGroupConfig": "EMPTY"}, json={
        "groupKey": {"id": "bola-team@example.com"}, "parent": f"customers/{customer}", "labels": DISCUSSION}))
    group = group_op["response"]["name"].split("/")[1]
    member_op = ok(c.post(f"/v1/groups/{group}/memberships", json={
        "preferredMemberKey": {"id": "bola-member@example.com"}, "roles": [{"name": "MEMBER"}]}))
    membership = member_op["response"]["name"].rsplit("/", 1)[1]
    sa = ok(c.post("/v1/projects/bola-proj-1/serviceAccounts", json={"accountId": "bola-sa"}))
    sa_key = ok(c.post(f"/v1/{sa['name']}/keys", json={}))["name"].rsplit("/", 1)[1]
    ok(c.post("/storage/v1/b", params={"project": "bola-proj-1"}, json={"name": "bola-bucket-1"}))
    ok(c.post("/upload/storage/v1/b/bola-bucket-1/o", params={"uploadType": "media", "name": "bola-object.txt"},
              content=b"x"))
    session = c.post("/upload/storage/v1/b/bola-bucket-1/o", params={"uploadType": "resumable"},
                     json={"name": "bola-resumable.txt"})
    assert session.status_code == 200, session.text
    upload_id = session.headers["location"].rsplit("upload_id=", 1)[1]
    attachment = ok(c.post(f"/v1/{sa['name']}/keycardAttachments", json={}))["name"].rsplit("/", 1)[1]
    ok(c.post("/v1/projects/bola-proj-1/models", json={"name": "bola_model"}))
    ml_op = ok(c.post("/v1/projects/bola-proj-1/models/bola_model/versions", json={
        "name": "v1", "deploymentUri": "gs://bola-bucket-1/nothing/", "framework": "SCIKIT_LEARN"}))
    ml_op_id = ml_op["name"].rsplit("/", 1)[1]
    ok(c.post("/v1/projects/bola-proj-1/jobs", json={"jobId": "bola_job", "predictionInput": _BOLA_JOB}))
    gone = ok(c.post("/v1/projects/bola-proj-1/serviceAccounts", json={"accountId": "bola-gone-sa"}))
    ok(c.delete(f"/v1/{gone['name']}"))
    for node in (f"organizations/{org}", f"folders/{folder}", "projects/bola-proj-1"):
        ok(c.post(f"/v2/{node}/policies", json={"name": f"{node}/policies/iam.disableServiceAccountKeyCreation",
                                                "spec": {"rules": [{"enforce": True}]}}))
    existing = {"ORG": org, "FOLDER": folder, "PROJECT": "bola-proj-1", "PROLE": "bolaRole",
                "OROLE": "bolaOrgRole", "DENY": "bola-deny", "DENYOP": deny_op, "CRMOP": crm_op,
                "GROUP": group, "GEMAIL": "bola-team@example.com", "MEMBERSHIP": membership,
                "MEMAIL": "bola-member@example.com", "CUSTOMER": customer,
                "CONSTRAINT": "iam.disableServiceAccountKeyCreation", "SAEMAIL": sa["email"], "SAKEY": sa_key,
                "SAUID": gone["uniqueId"], "BUCKET": "bola-bucket-1", "OBJECT": "bola-object.txt",
                "MODEL": "bola_model", "VERSION": "v1", "MLOP": ml_op_id, "ATTACHMENT": attachment,
                "JOB": "bola_job"}
    missing = {"ORG": _other_digits(org), "FOLDER": _other_digits(folder), "PROJECT": "gone-proj-1",
               "PROLE": "goneRole", "OROLE": "goneOrgRole", "DENY": "gone-deny", "DENYOP": _other_id(deny_op),
               "CRMOP": _other_id(crm_op), "GROUP": _other_id(group), "GEMAIL": "gone-team@example.com",
               "MEMBERSHIP": _other_id(membership), "MEMAIL": "gone-member@example.com",
               "CUSTOMER": _other_id(customer), "CONSTRAINT": "iam.disableServiceAccountKeyUpload",
               "SAEMAIL": "gone-sa1@bola-proj-1.iam.gserviceaccount.com", "SAKEY": _other_id(sa_key),
               "SAUID": _other_digits(gone["uniqueId"]), "BUCKET": "gone-bucket-1", "OBJECT": "gone-object.txt",
               "MODEL": "gone_model", "VERSION": "v9", "MLOP": _other_id(ml_op_id),
               "ATTACHMENT": _other_id(attachment), "JOB": "gone_job"}
    ok(c.post(f"/v1/organizations/{org}/keycardIdentityProviders", params={"identityProviderId": "bola-sso"},
              json={"oidc": {"issuerUri": "https://bola.idp.test", "clientIds": ["b"],
                             "jwksUri": "https://bola.idp.test/jwks"}}))
    existing["IDP"], missing["IDP"] = "bola-sso", "gone-sso"
    existing["UPLOAD"], missing["UPLOAD"] = upload_id, _other_id(upload_id)
    cai = ok(c.post("/v1/projects/bola-proj-1:exportAssets", json={
        "contentType": "IAM_POLICY", "outputConfig": {"gcsDestination": {"uri": "gs://bola-bucket-1/cai.json"}}}))
    existing["CAIOP"] = cai["name"].rsplit("/", 1)[1]
    missing["CAIOP"] = _other_id(existing["CAIOP"])
    wip = ok(c.post("/v1/projects/bola-proj-1/locations/global/workloadIdentityPools",
                    params={"workloadIdentityPoolId": "bola-pool"}, json={}))
    wipp = ok(c.post(f"/v1/{wip['response']['name']}/providers", params={"workloadIdentityPoolProviderId": "bola-prov"},
                     json={"attributeMapping": {"google.subject": "assertion.sub"},
                           "oidc": {"issuerUri": "https://bola.idp.test", "jwksJson": _BOLA_JWKS}}))
    wipop, wippop = wip["name"].rsplit("/", 1)[1], wipp["name"].rsplit("/", 1)[1]
    existing.update({"POOL": "bola-pool", "PROV": "bola-prov", "WIPOP": wipop, "WIPPOP": wippop})
    missing.update({"POOL": "gone-pool", "PROV": "gone-prov", "WIPOP": _other_id(wipop),
                    "WIPPOP": _other_id(wippop)})
    return {"existing": existing, "missing": missing}


_BOLA_JWKS = json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "kid": "bola", "use": "sig", "alg": "ES256",
                                   "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                                   "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]})


def _customer(server: Server) -> str:
    from keycard.store.sql import open_store

    store = open_store(server.database)
    try:
        inst = store.get("installation", "default")
        assert inst is not None
        return str(inst.data["customerId"])
    finally:
        store.close()


def _other_digits(value: str) -> str:
    """A number of the same length that is not ``value``."""
    return "".join("7" if ch != "7" else "3" for ch in value)


def _other_id(value: str) -> str:
    """An id of the same length and alphabet (digits and lower-case letters kept as such) that is not ``value``."""
    out = []
    for ch in value:
        if ch.isdigit():
            out.append("7" if ch != "7" else "3")
        elif ch.isalpha() and ch.islower():
            out.append("q" if ch != "q" else "z")
        elif ch.isalpha():
            out.append("Q" if ch != "Q" else "Z")
        else:
            out.append(ch)
    return "".join(out)


def test_every_route_is_in_the_matrix_or_skipped_with_a_reason() -> None:
    ops = [r.operation_id for r in ROUTES]
    assert len(ops) == len(set(ops)), "operation ids must be unique"
    unaccounted = [r.operation_id for r in ROUTES if r.operation_id not in CASES and r.operation_id not in SKIPPED]
    assert unaccounted == [], f"routes with no BOLA case and no reason to skip: {unaccounted}"
    assert set(CASES) <= set(ops) and set(SKIPPED) <= set(ops), set(CASES) - set(ops) | set(SKIPPED) - set(ops)
    router = _router()
    for r in ROUTES:
        if r.operation_id in SKIPPED:
            continue
        case = CASES[r.operation_id]
        hit, _params, _other = router.match(case.method, case.path.replace("{", "x").replace("}", "x"))
        assert hit is not None and hit.operation_id == r.operation_id, f"case for {r.operation_id} hits {hit}"
        # every route with a permission is checked for 403; the others only for a same answer
        assert (case.expect == "denied") == bool(r.permission) or r.operation_id.endswith("search") \
            or r.operation_id.startswith("iam.roles.query"), r.operation_id


def _normalised(r: httpx.Response, replace: tuple[str, str] | None = None) -> Any:
    text = r.text
    if replace is not None:
        text = text.replace(*replace)
    try:
        return r.status_code, json.loads(text)
    except json.JSONDecodeError:
        return r.status_code, text


@pytest.mark.parametrize(("route", "swap"), MATRIX)
def test_stranger_gets_the_same_403_whether_or_not_the_resource_exists(
        server: Server, world: dict[str, dict[str, str]], route: Route, swap: str) -> None:
    case = CASES[route.operation_id]
    existing = world["existing"]
    missing = {**existing, swap: world["missing"][swap]}
    with server.client(STRANGER) as c:
        r_existing = _send(c, case, existing)
        r_missing = _send(c, case, missing)
    assert r_existing.status_code < 500 and r_missing.status_code < 500, (r_existing.text, r_missing.text)
    if case.expect == "denied":
        for r in (r_existing, r_missing):
            assert r.status_code == 403, (route.operation_id, r.status_code, r.text)
            err = r.json()["error"]
            assert err["status"] == "PERMISSION_DENIED", err
            assert route.permission in err["message"], (route.permission, err["message"])
    else:
        assert existing[swap] not in r_existing.text or r_existing.status_code >= 400, \
            f"{route.operation_id} shows the stranger the existing resource: {r_existing.text[:500]}"
    # identical answers once the caller's two names are exchanged
    assert _normalised(r_missing, (missing[swap], existing[swap])) == _normalised(r_existing), \
        f"{route.operation_id}: existence is observable\n existing: {r_existing.text}\n missing:  {r_missing.text}"
