"""Google's name grammar: hierarchy nodes, full resource names, members, deny principals,
permissions (v1 and v2) and roles, as keycard.names parses them."""

from __future__ import annotations

import pytest

from keycard import names
from keycard.errors import InvalidArgument

CRM = "//cloudresourcemanager.googleapis.com"
ML = "//ml.googleapis.com/projects/p1-abc"
GCS = "//storage.googleapis.com/projects/_/buckets/my-bucket"
POOL = "iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool-1"
WF_POOL = "iam.googleapis.com/locations/global/workforcePools/pool-1"


def assert_invalid(fn, value: object, field: str) -> InvalidArgument:  # type: ignore[no-untyped-def]
    """``fn(value, field)`` raises InvalidArgument naming ``field`` (in .field and the message)."""
    with pytest.raises(InvalidArgument) as exc_info:
        fn(value, field)
    err = exc_info.value
    assert err.field == field
    assert field in str(err)
    assert err.metadata["field"] == field
    assert err.status == "INVALID_ARGUMENT" and err.http_status == 400
    return err


# ------------------------------------------------------------------------------------- hierarchy

@pytest.mark.parametrize(
    ("name", "rtype"),
    [
        ("organizations/123", "Organization"),
        ("folders/456", "Folder"),
        ("projects/my-project", "Project"),
        ("projects/123456", "Project"),
        ("projects/a12345", "Project"),  # 6 characters: the shortest id
        ("projects/a" + "b" * 28 + "c", "Project"),  # 30 characters: the longest id
    ],
)
def test_hierarchy_short_and_full_forms(name: str, rtype: str) -> None:
    full = f"{CRM}/{name}"
    for text in (name, full):
        rn = names.parse_resource(text)
        assert rn.full == full
        assert rn.service == "cloudresourcemanager.googleapis.com"
        assert rn.relative == name
        assert rn.type == f"cloudresourcemanager.googleapis.com/{rtype}"
        assert rn.parent is None  # the name alone does not say where a node hangs
        assert rn.is_container


@pytest.mark.parametrize(
    "name",
    [
        "projects/ab",                       # too short
        "projects/abcde",                    # 5 characters
        "projects/a" + "b" * 29 + "c",       # 31 characters
        "projects/My-Proj",                  # upper case
        "projects/-bad",                     # starts with a hyphen
        "projects/bad-project-",             # ends with a hyphen
        "projects/1abcdef",                  # starts with a digit but is not a number
        "projects/my_project",               # underscore
        "organizations/abc",
        "folders/abc",
        "folders/",
        "organizations/",
        "projects/",
        "",
        "/",
        "//",
        "projects",
        "buckets/x",
        f"{CRM}/projects/x_y",
        f"{CRM}/projects/ab",
        f"{CRM}/organizations/abc",
        f"{CRM}/folders/",
        f"{CRM}/",
        f"{CRM}",
        "projects/my-project\n",             # a trailing newline is not part of the name
        f"{CRM}/projects/my-project\n",
        " projects/my-project",
        "//Cloudresourcemanager.googleapis.com/projects/my-project",
        "//localhost/projects/my-project",   # the service must be a DNS name
        f"{CRM}/projects//x",                # empty segment
        f"{CRM}/projects/my-project/",       # trailing slash
        f"{CRM}/projects/my project/x",      # whitespace
    ],
)
def test_invalid_hierarchy_names(name: str) -> None:
    assert_invalid(names.parse_resource, name, "resource")


@pytest.mark.parametrize("value", [None, 123, 1.5, b"projects/my-project", ["projects/my-project"], {}])
def test_parse_resource_rejects_non_strings(value: object) -> None:
    assert_invalid(names.parse_resource, value, "parent")


def test_parse_resource_too_long() -> None:
    err = assert_invalid(names.parse_resource, "//compute.googleapis.com/" + "a/" * 1100 + "b", "resource")
    assert "2048" in str(err)
    assert len(str(err)) < 400  # the value is shortened in the message


# ---------------------------------------------------------------------------------- full resource names

@pytest.mark.parametrize(
    ("name", "full", "service", "relative", "rtype", "parent"),
    [
        (f"{ML}/models/m1", f"{ML}/models/m1", "ml.googleapis.com", "projects/p1-abc/models/m1",
         "ml.googleapis.com/Model", f"{CRM}/projects/p1-abc"),
        (f"{ML}/models/m1/versions/v1", f"{ML}/models/m1/versions/v1", "ml.googleapis.com",
         "projects/p1-abc/models/m1/versions/v1", "ml.googleapis.com/Version", f"{ML}/models/m1"),
        (f"{ML}/jobs/j1", f"{ML}/jobs/j1", "ml.googleapis.com", "projects/p1-abc/jobs/j1",
         "ml.googleapis.com/Job", f"{CRM}/projects/p1-abc"),
        (f"{ML}/operations/op-1", f"{ML}/operations/op-1", "ml.googleapis.com", "projects/p1-abc/operations/op-1",
         "ml.googleapis.com/Operation", f"{CRM}/projects/p1-abc"),
        ("//ml.googleapis.com/projects/123456/models/m1", "//ml.googleapis.com/projects/123456/models/m1",
         "ml.googleapis.com", "projects/123456/models/m1", "ml.googleapis.com/Model", f"{CRM}/projects/123456"),
        (GCS, GCS, "storage.googleapis.com", "projects/_/buckets/my-bucket", "storage.googleapis.com/Bucket", None),
        (f"{GCS}/objects/path/to/file.txt", f"{GCS}/objects/path/to/file.txt", "storage.googleapis.com",
         "projects/_/buckets/my-bucket/objects/path/to/file.txt", "storage.googleapis.com/Object", GCS),
        # Cloud Storage object names may hold spaces and empty segments
        (f"{GCS}/objects/a//b c", f"{GCS}/objects/a//b c", "storage.googleapis.com",
         "projects/_/buckets/my-bucket/objects/a//b c", "storage.googleapis.com/Object", GCS),
        # Cloud Asset Inventory names buckets without projects/_/buckets/
        ("//storage.googleapis.com/my-bucket", GCS, "storage.googleapis.com", "projects/_/buckets/my-bucket",
         "storage.googleapis.com/Bucket", None),
        ("//iam.googleapis.com/projects/p1-abc/serviceAccounts/sa@p1-abc.iam.gserviceaccount.com",
         "//iam.googleapis.com/projects/p1-abc/serviceAccounts/sa@p1-abc.iam.gserviceaccount.com",
         "iam.googleapis.com", "projects/p1-abc/serviceAccounts/sa@p1-abc.iam.gserviceaccount.com",
         "iam.googleapis.com/ServiceAccount", f"{CRM}/projects/p1-abc"),
        ("//iam.googleapis.com/projects/p1-abc/serviceAccounts/sa@x.com/keys/k1",
         "//iam.googleapis.com/projects/p1-abc/serviceAccounts/sa@x.com/keys/k1",
         "iam.googleapis.com", "projects/p1-abc/serviceAccounts/sa@x.com/keys/k1",
         "iam.googleapis.com/ServiceAccountKey", "//iam.googleapis.com/projects/p1-abc/serviceAccounts/sa@x.com"),
        ("//iam.googleapis.com/organizations/123/roles/myRole", "//iam.googleapis.com/organizations/123/roles/myRole",
         "iam.googleapis.com", "organizations/123/roles/myRole", "iam.googleapis.com/Role",
         f"{CRM}/organizations/123"),
        ("//compute.googleapis.com/projects/p1-abc/zones/z/instances/i",
         "//compute.googleapis.com/projects/p1-abc/zones/z/instances/i", "compute.googleapis.com",
         "projects/p1-abc/zones/z/instances/i", "compute.googleapis.com/Unknown", f"{CRM}/projects/p1-abc"),
        ("//bigquery.googleapis.com/folders/456/x/y", "//bigquery.googleapis.com/folders/456/x/y",
         "bigquery.googleapis.com", "folders/456/x/y", "bigquery.googleapis.com/Unknown", f"{CRM}/folders/456"),
        # an unknown resource that names no hierarchy node has no parent
        ("//compute.googleapis.com/global/networks/n", "//compute.googleapis.com/global/networks/n",
         "compute.googleapis.com", "global/networks/n", "compute.googleapis.com/Unknown", None),
        # projects/- and projects/_ are wildcards, not projects: no parent to derive
        ("//iam.googleapis.com/projects/-/serviceAccounts/sa@p1-abc.iam.gserviceaccount.com",
         "//iam.googleapis.com/projects/-/serviceAccounts/sa@p1-abc.iam.gserviceaccount.com",
         "iam.googleapis.com", "projects/-/serviceAccounts/sa@p1-abc.iam.gserviceaccount.com",
         "iam.googleapis.com/ServiceAccount", None),
        ("//ml.googleapis.com/projects/_/models/m1", "//ml.googleapis.com/projects/_/models/m1",
         "ml.googleapis.com", "projects/_/models/m1", "ml.googleapis.com/Model", None),
        ("//compute.googleapis.com/projects/-/zones/z", "//compute.googleapis.com/projects/-/zones/z",
         "compute.googleapis.com", "projects/-/zones/z", "compute.googleapis.com/Unknown", None),
        # an unknown resource under an invalid project id derives no (unparseable) parent
        ("//compute.googleapis.com/projects/ab/zones/z", "//compute.googleapis.com/projects/ab/zones/z",
         "compute.googleapis.com", "projects/ab/zones/z", "compute.googleapis.com/Unknown", None),
    ],
)
def test_full_resource_names(name: str, full: str, service: str, relative: str, rtype: str,
                             parent: str | None) -> None:
    rn = names.parse_resource(name)
    assert (rn.full, rn.service, rn.relative, rn.type, rn.parent) == (full, service, relative, rtype, parent)
    assert not rn.is_container
    assert names.parse_resource(rn.full) == rn  # canonical form is a fixed point
    if rn.parent is not None:
        names.parse_resource(rn.parent)  # a derived parent is always a valid name


def test_parent_chain_reaches_the_project() -> None:
    chain = []
    name: str | None = f"{ML}/models/m1/versions/v1"
    while name is not None:
        chain.append(name)
        name = names.parse_resource(name).parent
    assert chain == [f"{ML}/models/m1/versions/v1", f"{ML}/models/m1", f"{CRM}/projects/p1-abc"]


@pytest.mark.parametrize(
    "name",
    [
        "//storage.googleapis.com/projects/_/buckets/AB",       # upper case, too short
        "//storage.googleapis.com/projects/_/buckets/-bucket",  # starts with a hyphen
        "//storage.googleapis.com/x",                          # CAI form with a bad bucket
        f"{GCS}/objects/a\nb",                                  # object names hold no line breaks
        f"{ML}/models/a//b",                                    # empty segment
        f"{ML}/models/1model",                                  # model ids start with a letter
        f"{ML}/models/m1/versions/9",
        f"{ML}/jobs/j.1",
        "ml.googleapis.com/projects/p1-abc/models/m1",         # no leading //
        "//ml/projects/p1-abc/models/m1",                      # service is not a DNS name
        "//ml.googleapis.com/",
        "//ml.googleapis.com",
        "///projects/p1-abc",
        f"{ML}/models/m1\n",
        "//compute.googleapis.com/projects/p1-abc\n/zones/z",   # newline inside a segment
    ],
)
def test_invalid_full_resource_names(name: str) -> None:
    assert_invalid(names.parse_resource, name, "resource")


@pytest.mark.parametrize(
    ("relative", "container"),
    [
        ("projects/p1-abc/models/m1", f"{CRM}/projects/p1-abc"),
        ("folders/456/x", f"{CRM}/folders/456"),
        ("organizations/123/x/y", f"{CRM}/organizations/123"),
        ("projects/p1-abc", None),
        ("projects/_/buckets/b", None),
        ("projects/-/serviceAccounts/x", None),
        ("projects/ab/x", None),
        ("zones/z/x", None),
    ],
)
def test_container_full_name(relative: str, container: str | None) -> None:
    assert names.container_full_name(relative) == container


# -------------------------------------------------------------------------------------------- members

@pytest.mark.parametrize(
    ("member", "canonical"),
    [
        ("user:Alice@Example.COM", "user:alice@example.com"),
        ("user:alice@example.com", "user:alice@example.com"),
        ("user:first.last+tag@sub.example.co.uk", "user:first.last+tag@sub.example.co.uk"),
        ("group:Admins@Example.com", "group:admins@example.com"),
        ("serviceAccount:SA@p1-abc.iam.gserviceaccount.com", "serviceAccount:sa@p1-abc.iam.gserviceaccount.com"),
        ("domain:Example.com", "domain:example.com"),
        ("domain:example.com", "domain:example.com"),
        ("allUsers", "allUsers"),
        ("allAuthenticatedUsers", "allAuthenticatedUsers"),
        (f"principal://{POOL}/subject/sub", f"principal://{POOL}/subject/sub"),
        (f"principalSet://{POOL}/*", f"principalSet://{POOL}/*"),
        (f"principalSet://{POOL}/attribute.repo/x", f"principalSet://{POOL}/attribute.repo/x"),
        (f"principalSet://{POOL}/group/g", f"principalSet://{POOL}/group/g"),
        (f"principal://{WF_POOL}/subject/s", f"principal://{WF_POOL}/subject/s"),
        (f"principalSet://{WF_POOL}/*", f"principalSet://{WF_POOL}/*"),
        (f"principalSet://{WF_POOL}/group/g", f"principalSet://{WF_POOL}/group/g"),
        (f"principalSet://{WF_POOL}/attribute.department/eng", f"principalSet://{WF_POOL}/attribute.department/eng"),
        ("deleted:user:bob@example.com?uid=123", "deleted:user:bob@example.com?uid=123"),
        ("deleted:user:Bob@Example.com?uid=123", "deleted:user:bob@example.com?uid=123"),
        ("deleted:group:g@example.com?uid=9", "deleted:group:g@example.com?uid=9"),
        ("deleted:serviceAccount:sa@p1-abc.iam.gserviceaccount.com?uid=1",
         "deleted:serviceAccount:sa@p1-abc.iam.gserviceaccount.com?uid=1"),
        ("projectOwner:my-project", "projectOwner:my-project"),
        ("projectViewer:123456", "projectViewer:123456"),
        # IAM v2 aliases of Google identities
        ("principal://goog/subject/a@b.com", "user:a@b.com"),
        ("principal://goog/subject/A@B.com", "user:a@b.com"),
        ("principalSet://goog/group/g@b.com", "group:g@b.com"),
        ("principalSet://goog/public:all", "allUsers"),
        ("principal://iam.googleapis.com/projects/-/serviceAccounts/sa@p.iam.gserviceaccount.com",
         "serviceAccount:sa@p.iam.gserviceaccount.com"),
    ],
)
def test_valid_members(member: str, canonical: str) -> None:
    assert names.parse_member(member) == canonical
    assert names.parse_member(canonical) == canonical  # idempotent


@pytest.mark.parametrize(
    "member",
    [
        "user:",
        "user:not-an-email",
        "user:a@b",                        # a domain needs a dot
        "user:a b@example.com",
        "user:@example.com",
        "user:a@-example.com",
        "user:a@example.com\n",            # a trailing newline is not part of the email
        "group:",
        "serviceAccount:",
        "bogus:x",
        "alice@example.com",               # no prefix
        "deleted:user:b@x.com",            # no uid
        "deleted:user:b@x.com?uid=",
        "deleted:user:b@x.com?uid=abc",
        "deleted:user:b@x.com?uid=²",      # a superscript is a digit to str.isdigit, not a uid
        "deleted:user:b@x.com?uid=١٢٣",    # so are Arabic-Indic digits
        "deleted:bogus:x?uid=1",
        "domain:",
        "domain:localhost",
        "domain:example.com\n",
        "allusers",
        "AllUsers",
        "",
        "principal://goog/subject/not-an-email",
        "principal://iam.googleapis.com/projects/abc/locations/global/workloadIdentityPools/pool-1/subject/s",
        f"principal://{POOL}/subject/",
        f"principal://{POOL}/subject/s\n",
        f"principalSet://{POOL}/",
        f"principalSet://{POOL}/nope/x",
        "principalSet://goog/group/not-an-email",
        "principalSet://goog/public:none",
        "projectOwner:ab",
    ],
)
def test_invalid_members(member: str) -> None:
    assert_invalid(names.parse_member, member, "bindings[0].members[1]")


@pytest.mark.parametrize("value", [None, 1, True, ["user:a@b.com"], {"user": "a@b.com"}])
def test_parse_member_rejects_non_strings(value: object) -> None:
    assert_invalid(names.parse_member, value, "member")


def test_parse_member_too_long() -> None:
    assert_invalid(names.parse_member, "user:" + "a" * 1100 + "@example.com", "member")


@pytest.mark.parametrize(
    ("member", "email"),
    [
        ("user:a@b.com", "a@b.com"),
        ("group:g@b.com", "g@b.com"),
        ("serviceAccount:sa@p.iam.gserviceaccount.com", "sa@p.iam.gserviceaccount.com"),
        ("domain:b.com", None),
        ("allUsers", None),
        (f"principal://{POOL}/subject/sub", None),
    ],
)
def test_member_email(member: str, email: str | None) -> None:
    assert names.member_email(member) == email


# ------------------------------------------------------------------------------------ deny principals

@pytest.mark.parametrize(
    ("ident", "key"),
    [
        ("principal://goog/subject/a@b.com", "user:a@b.com"),
        ("principal://goog/subject/Alice@Example.COM", "user:alice@example.com"),
        ("principalSet://goog/group/g@b.com", "group:g@b.com"),
        ("principalSet://goog/public:all", "allUsers"),
        ("principal://iam.googleapis.com/projects/-/serviceAccounts/sa@p.iam.gserviceaccount.com",
         "serviceAccount:sa@p.iam.gserviceaccount.com"),
        (f"principal://{POOL}/subject/sub", f"principal://{POOL}/subject/sub"),
        (f"principalSet://{POOL}/*", f"principalSet://{POOL}/*"),
        (f"principalSet://{WF_POOL}/group/g", f"principalSet://{WF_POOL}/group/g"),
        ("principalSet://goog/cloudIdentityCustomerId/C01abc", "principalSet://goog/cloudIdentityCustomerId/C01abc"),
        ("principalSet://cloudresourcemanager.googleapis.com/projects/123/type/ServiceAccount",
         "principalSet://cloudresourcemanager.googleapis.com/projects/123/type/ServiceAccount"),
        ("deleted:principal://goog/subject/a@b.com?uid=123", "deleted:user:a@b.com?uid=123"),
    ],
)
def test_valid_deny_principals(ident: str, key: str) -> None:
    assert names.parse_deny_principal(ident) == key


@pytest.mark.parametrize(
    ("ident", "suggestion"),
    [
        ("user:a@b.com", "principal://goog/subject/a@b.com"),
        ("group:g@b.com", "principalSet://goog/group/g@b.com"),
        ("serviceAccount:sa@p.iam.gserviceaccount.com",
         "principal://iam.googleapis.com/projects/-/serviceAccounts/sa@p.iam.gserviceaccount.com"),
        ("allUsers", "principalSet://goog/public:all"),
        ("allAuthenticatedUsers", "principalSet://goog/public:all"),
    ],
)
def test_v1_members_rejected_in_deny_policies_with_a_suggestion(ident: str, suggestion: str) -> None:
    err = assert_invalid(names.parse_deny_principal, ident, "rules[0].denyRule.deniedPrincipals[0]")
    assert suggestion in str(err)


@pytest.mark.parametrize(
    "ident",
    [
        "",
        "domain:example.com",
        "principal://goog/subject/not-an-email",
        "principalSet://goog/public:none",
        "deleted:principal://goog/subject/a@b.com",          # no uid
        "deleted:principal://goog/subject/a@b.com?uid=x",
        "deleted:principal://goog/subject/a@b.com?uid=²",
        "principal://goog/subject/a@b.com\n",
        f"principal://{POOL}/subject/sub\n",
        "a@b.com",
    ],
)
def test_invalid_deny_principals(ident: str) -> None:
    assert_invalid(names.parse_deny_principal, ident, "deniedPrincipals")


@pytest.mark.parametrize("value", [None, 3, ["principalSet://goog/public:all"], "x" * 1025])
def test_parse_deny_principal_rejects_non_strings_and_long_values(value: object) -> None:
    assert_invalid(names.parse_deny_principal, value, "exceptionPrincipals[0]")


# ---------------------------------------------------------------------------------------- permissions

@pytest.mark.parametrize(
    "permission",
    [
        "ml.models.get",
        "resourcemanager.projects.get",
        "iam.googleapis.com/workloadIdentityPools.get",
        "storage.objects.getIamPolicy",
        "compute.instances.setMetadata",
        "bigquery.tables.get_data",
    ],
)
def test_valid_permissions(permission: str) -> None:
    assert names.parse_permission(permission) == permission


@pytest.mark.parametrize(
    "permission",
    [
        "ml.models",
        "ml..get",
        "ML.models.get",
        "ml.models.get.x",
        "",
        "ml",
        ".models.get",
        "ml.models.",
        "ml.models.get\n",
        "ml.models.g et",
        "ml.googleapis.com/models",
        "ml.models.*",
        "x" * 300,
    ],
)
def test_invalid_permissions(permission: str) -> None:
    assert_invalid(names.parse_permission, permission, "includedPermissions[3]")


@pytest.mark.parametrize("value", [None, 1, ["ml.models.get"]])
def test_parse_permission_rejects_non_strings(value: object) -> None:
    assert_invalid(names.parse_permission, value, "permission")


@pytest.mark.parametrize(
    ("permission", "parsed"),
    [
        ("ml.googleapis.com/models.get", ("ml", "models", "get")),
        ("ml.googleapis.com/models.delete", ("ml", "models", "delete")),
        ("cloudresourcemanager.googleapis.com/projects.delete", ("resourcemanager", "projects", "delete")),
        ("storage.googleapis.com/buckets.setIamPolicy", ("storage", "buckets", "setIamPolicy")),
        ("iam.googleapis.com/roles.*", ("iam", "roles", "*")),
        ("iam.googleapis.com/*.create", ("iam", "*", "create")),
        ("iam.googleapis.com/*.*", ("iam", "*", "*")),
        ("iam.googleapis.com/*", ("iam", "*", "*")),
    ],
)
def test_valid_deny_permissions(permission: str, parsed: tuple[str, str, str]) -> None:
    assert names.parse_deny_permission(permission) == parsed


@pytest.mark.parametrize(
    "permission",
    [
        "ml.models.get",              # the v1 form
        "*",
        "foo/bar.baz",
        "",
        "ml.example.com/models.get",  # not a googleapis.com service
        "ml.googleapis.com/models",
        "ml.googleapis.com/models.get.x",
        "ml.googleapis.com/",
        "ml.googleapis.com/models.get\n",
        "ML.googleapis.com/models.get",
        "/models.get",
    ],
)
def test_invalid_deny_permissions(permission: str) -> None:
    assert_invalid(names.parse_deny_permission, permission, "rules[1].denyRule.deniedPermissions[0]")


@pytest.mark.parametrize("value", [None, 7, ("ml.googleapis.com/models.get",), "ml.googleapis.com/" + "a" * 300])
def test_parse_deny_permission_rejects_non_strings_and_long_values(value: object) -> None:
    assert_invalid(names.parse_deny_permission, value, "deniedPermissions")


# ---------------------------------------------------------------------------------------------- roles

@pytest.mark.parametrize(
    ("role", "scope"),
    [
        ("roles/viewer", None),
        ("roles/ml.modelUser", None),
        ("roles/resourcemanager.organizationAdmin", None),
        ("projects/my-project/roles/myRole", f"{CRM}/projects/my-project"),
        ("projects/123456/roles/my_role", f"{CRM}/projects/123456"),
        ("organizations/123/roles/my_role", f"{CRM}/organizations/123"),
        ("organizations/123/roles/a.b_c", f"{CRM}/organizations/123"),
    ],
)
def test_valid_roles_and_their_scope(role: str, scope: str | None) -> None:
    assert names.parse_role_name(role) == role
    assert names.role_scope(role) == scope
    if scope is not None:
        assert names.parse_resource(scope).is_container


@pytest.mark.parametrize(
    "role",
    [
        "role/viewer",
        "roles/",
        "roles",
        "viewer",
        "",
        "projects/x/roles/a",            # bad project id
        "projects/My-Proj/roles/a",
        "projects/my-project/roles/",
        "projects/my-project/roles/my-role",  # hyphens are not allowed in role ids
        "projects/my-project/roles/" + "a" * 65,
        "organizations/abc/roles/a",
        "folders/123/roles/a",           # custom roles live in projects and organizations only
        "roles/viewer\n",
        "roles/view er",
        "roles/viewer/x",
    ],
)
def test_invalid_roles(role: str) -> None:
    assert_invalid(names.parse_role_name, role, "bindings[4].role")


@pytest.mark.parametrize("value", [None, 0, ["roles/viewer"], {"name": "roles/viewer"}])
def test_parse_role_name_rejects_non_strings(value: object) -> None:
    assert_invalid(names.parse_role_name, value, "role")


@pytest.mark.parametrize(
    ("role_id", "ok"),
    [("myRole", True), ("my_role.v2", True), ("a" * 64, True), ("a" * 65, False), ("my-role", False),
     ("", False), ("myRole\n", False)],
)
def test_is_valid_role_id(role_id: str, ok: bool) -> None:
    assert names.is_valid_role_id(role_id) is ok


# ------------------------------------------------------------------------------------- default fields

@pytest.mark.parametrize(
    ("fn", "value", "field"),
    [
        (names.parse_resource, "bogus", "resource"),
        (names.parse_member, "bogus", "member"),
        (names.parse_deny_principal, "bogus", "deniedPrincipals"),
        (names.parse_permission, "bogus", "permission"),
        (names.parse_deny_permission, "bogus", "deniedPermissions"),
        (names.parse_role_name, "bogus", "role"),
    ],
)
def test_default_field_names(fn, value: str, field: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument) as exc_info:
        fn(value)
    assert exc_info.value.field == field
    assert field in str(exc_info.value)
    assert "\n" not in str(exc_info.value)  # one line


def test_same_value_different_fields_are_reported_separately() -> None:
    """Parsers cache their results; the cache must not leak one call's field name into another's error."""
    for fld in ("a.members[0]", "b.members[7]"):
        assert_invalid(names.parse_member, "user:nope", fld)
        assert_invalid(names.parse_resource, "projects/ab", fld)
        assert_invalid(names.parse_permission, "nope", fld)
