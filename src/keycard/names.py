"""Every name keycard reads or writes, parsed and formatted in one place.

Google's grammar (AIP-122): hierarchy nodes ``organizations/N``, ``folders/N``,
``projects/ID|NUMBER``; full resource names ``//SERVICE/RELATIVE``; principals
(``user:``, ``group:``, ``serviceAccount:``, ``domain:``, ``allUsers``,
``allAuthenticatedUsers``, ``principal://…``, ``principalSet://…``,
``deleted:…?uid=…``); permissions ``service.resource.verb``; roles
``roles/R``, ``projects/P/roles/R``, ``organizations/O/roles/R``; deny-policy
(IAM v2) principals and permissions.

Every parser raises :class:`keycard.errors.InvalidArgument` naming the field
and nothing else. Emails are case-insensitive and normalised to lower case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from keycard.errors import InvalidArgument

__all__ = [
    "CRM",
    "ResourceName",
    "container_full_name",
    "member_email",
    "parse_deny_permission",
    "parse_deny_principal",
    "parse_member",
    "parse_permission",
    "parse_resource",
    "parse_role_name",
    "role_scope",
]

CRM = "cloudresourcemanager.googleapis.com"

_MAX_NAME = 2048
_PROJECT_ID = r"[a-z][a-z0-9-]{4,28}[a-z0-9]"
_NUMBER = r"[0-9]{1,20}"
_PROJECT = rf"(?:{_PROJECT_ID}|{_NUMBER}|_|-)"
_EMAIL_RE = re.compile(r"^[^@\s:/?#]+@[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+$")
_DOMAIN_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+$")
_SERVICE_RE = re.compile(r"^[a-z][a-z0-9-]*(?:\.[a-z0-9-]+)+$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_ML_ID_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,127}$")
_ROLE_ID_RE = re.compile(r"^[A-Za-z0-9_.]{1,64}$")
_PERM_PART = r"[a-zA-Z][a-zA-Z0-9_]*"
_PERMISSION_RE = re.compile(
    rf"^(?:[a-z][a-z0-9]*|[a-z0-9][a-z0-9-]*(?:\.[a-z0-9-]+)+/{_PERM_PART})\.{_PERM_PART}\.{_PERM_PART}$"
    rf"|^[a-z0-9][a-z0-9-]*(?:\.[a-z0-9-]+)+/{_PERM_PART}\.{_PERM_PART}$"
)
_NODE_RE = re.compile(rf"^(organizations/{_NUMBER}|folders/{_NUMBER}|projects/{_PROJECT_ID}|projects/{_NUMBER})$")

# (service, relative-name pattern, resource type, how to find the parent)
# Parent: a format string over the match groups giving the parent's full name.
_KNOWN: tuple[tuple[str, re.Pattern[str], str, str | None], ...] = (
    (CRM, re.compile(rf"^organizations/({_NUMBER})$"), f"{CRM}/Organization", None),
    (CRM, re.compile(rf"^folders/({_NUMBER})$"), f"{CRM}/Folder", None),
    (CRM, re.compile(rf"^projects/({_PROJECT_ID}|{_NUMBER})$"), f"{CRM}/Project", None),
    ("ml.googleapis.com", re.compile(rf"^projects/({_PROJECT})/models/([^/]+)$"),
     "ml.googleapis.com/Model", f"//{CRM}/projects/{{0}}"),
    ("ml.googleapis.com", re.compile(rf"^projects/({_PROJECT})/models/([^/]+)/versions/([^/]+)$"),
     "ml.googleapis.com/Version", "//ml.googleapis.com/projects/{0}/models/{1}"),
    ("ml.googleapis.com", re.compile(rf"^projects/({_PROJECT})/jobs/([^/]+)$"),
     "ml.googleapis.com/Job", f"//{CRM}/projects/{{0}}"),
    ("ml.googleapis.com", re.compile(rf"^projects/({_PROJECT})/operations/([^/]+)$"),
     "ml.googleapis.com/Operation", f"//{CRM}/projects/{{0}}"),
    ("storage.googleapis.com", re.compile(r"^projects/_/buckets/([^/]+)$"),
     "storage.googleapis.com/Bucket", None),
    ("storage.googleapis.com", re.compile(r"^projects/_/buckets/([^/]+)/objects/(.+)$"),
     "storage.googleapis.com/Object", "//storage.googleapis.com/projects/_/buckets/{0}"),
    ("iam.googleapis.com", re.compile(rf"^projects/({_PROJECT})/serviceAccounts/([^/]+)$"),
     "iam.googleapis.com/ServiceAccount", f"//{CRM}/projects/{{0}}"),
    ("iam.googleapis.com", re.compile(rf"^projects/({_PROJECT})/serviceAccounts/([^/]+)/keys/([^/]+)$"),
     "iam.googleapis.com/ServiceAccountKey", "//iam.googleapis.com/projects/{0}/serviceAccounts/{1}"),
    ("iam.googleapis.com", re.compile(rf"^projects/({_PROJECT})/roles/([^/]+)$"),
     "iam.googleapis.com/Role", f"//{CRM}/projects/{{0}}"),
    ("iam.googleapis.com", re.compile(rf"^organizations/({_NUMBER})/roles/([^/]+)$"),
     "iam.googleapis.com/Role", f"//{CRM}/organizations/{{0}}"),
    ("iam.googleapis.com",
     re.compile(rf"^projects/({_PROJECT})/locations/global/workloadIdentityPools/([^/]+)$"),
     "iam.googleapis.com/WorkloadIdentityPool", f"//{CRM}/projects/{{0}}"),
    # Identity-Aware Proxy web resources (keycard proxy): project → iap_web → type → service → version
    ("iap.googleapis.com", re.compile(rf"^projects/({_PROJECT_ID}|{_NUMBER})/iap_web$"),
     "iap.googleapis.com/Web", f"//{CRM}/projects/{{0}}"),
    ("iap.googleapis.com", re.compile(rf"^projects/({_PROJECT_ID}|{_NUMBER})/iap_web/([a-z][a-z0-9-]{{0,62}})$"),
     "iap.googleapis.com/WebType", "//iap.googleapis.com/projects/{0}/iap_web"),
    ("iap.googleapis.com", re.compile(rf"^projects/({_PROJECT_ID}|{_NUMBER})/iap_web/([a-z][a-z0-9-]{{0,62}})"
                                      r"/services/([a-z0-9][a-z0-9_-]{0,62})$"),
     "iap.googleapis.com/WebService", "//iap.googleapis.com/projects/{0}/iap_web/{1}"),
    ("iap.googleapis.com", re.compile(rf"^projects/({_PROJECT_ID}|{_NUMBER})/iap_web/([a-z][a-z0-9-]{{0,62}})"
                                      r"/services/([a-z0-9][a-z0-9_-]{0,62})/versions/([a-z0-9][a-z0-9_-]{0,62})$"),
     "iap.googleapis.com/WebServiceVersion", "//iap.googleapis.com/projects/{0}/iap_web/{1}/services/{2}"),
)


@dataclass(frozen=True, slots=True)
class ResourceName:
    """A parsed full resource name."""

    full: str            # canonical: //SERVICE/RELATIVE
    service: str         # e.g. "ml.googleapis.com"
    relative: str        # e.g. "projects/p/models/m" (what IAM Conditions call resource.name)
    type: str            # e.g. "ml.googleapis.com/Model"; "SERVICE/Unknown" when not a known pattern
    parent: str | None   # the parent's full name when the name alone says it, else None

    @property
    def is_container(self) -> bool:
        """Organization, folder or project: a node of the resource hierarchy."""
        return self.service == CRM and self.relative.count("/") == 1


def _bad(field: str, value: object, what: str) -> InvalidArgument:
    shown = repr(value) if len(repr(value)) <= 120 else repr(value)[:117] + "...'"
    return InvalidArgument(f"Invalid {field} {shown}: {what}.", field=field)


_RELATIVE_RE = re.compile(r"[^/\s]+(?:/[^/\s]+)*")
_KNOWN_BY_SERVICE: dict[str, tuple[tuple[str, re.Pattern[str], str, str | None], ...]] = {}
for _entry in _KNOWN:
    _KNOWN_BY_SERVICE[_entry[0]] = (*_KNOWN_BY_SERVICE.get(_entry[0], ()), _entry)

# Plain dict caches (faster than lru_cache on the hot load path); cleared when they grow too big.
_CACHE_LIMIT = 1 << 20
_RESOURCE_CACHE: dict[str, ResourceName] = {}
_MEMBER_CACHE: dict[str, str] = {}
MEMBER_CACHE = _MEMBER_CACHE      # read-only view for hot loops elsewhere: raw member → canonical member
_ROLE_CACHE: set[str] = set()


def _parse_resource_cached(name: str, field: str) -> ResourceName:
    hit = _RESOURCE_CACHE.get(name)
    if hit is None:
        hit = _parse_resource_uncached(name, field)
        if len(_RESOURCE_CACHE) >= _CACHE_LIMIT:
            _RESOURCE_CACHE.clear()
        _RESOURCE_CACHE[name] = hit
    return hit


# Cloud Storage object names may hold any UTF-8 but CR, LF and NUL (spaces, '//', …).
_BUCKET_TYPES = frozenset({"storage.googleapis.com/Bucket", "storage.googleapis.com/Object"})
_OBJECT_RE = re.compile(r"projects/_/buckets/[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]/objects/[^\r\n\x00]+")


def _parse_resource_uncached(name: str, field: str) -> ResourceName:
    if len(name) > _MAX_NAME:
        raise _bad(field, name, f"longer than {_MAX_NAME} characters")
    if _NODE_RE.fullmatch(name):                  # short form: organizations/N, folders/N, projects/P
        name = f"//{CRM}/{name}"
    if not name.startswith("//"):
        raise _bad(field, name, "expected a full resource name such as '//cloudresourcemanager.googleapis.com/"
                                "projects/my-project' or a hierarchy name such as 'projects/my-project'")
    service, _, relative = name[2:].partition("/")
    if not _SERVICE_RE.fullmatch(service):
        raise _bad(field, name, "the service part must be a DNS name such as 'ml.googleapis.com'")
    object_name = service == "storage.googleapis.com" and _OBJECT_RE.fullmatch(relative) is not None
    if not relative or (not object_name and not _RELATIVE_RE.fullmatch(relative)):
        raise _bad(field, name, "the path after the service must be non-empty segments separated by '/'")
    if service == "storage.googleapis.com" and "/" not in relative:
        relative = f"projects/_/buckets/{relative}"  # Cloud Asset Inventory names buckets //storage.googleapis.com/B
    for _svc, pattern, rtype, parent_fmt in _KNOWN_BY_SERVICE.get(service, ()):
        m = pattern.fullmatch(relative)
        if m is None:
            continue
        if rtype in _BUCKET_TYPES and not _BUCKET_RE.fullmatch(m.group(1)):   # an object's bucket too
            raise _bad(field, name, "bucket names are 3-222 characters of a-z, 0-9, '.', '_' and '-', "
                                    "starting and ending with a letter or digit")
        if rtype.startswith("ml.googleapis.com/") and rtype != "ml.googleapis.com/Operation" \
                and not all(_ML_ID_RE.fullmatch(g) for g in m.groups()[1:]):
            raise _bad(field, name, "model, version and job ids start with a letter and hold letters, "
                                    "digits, '_' and '-'")
        parent = parent_fmt.format(*m.groups()) if parent_fmt else None
        if parent and parent.startswith(f"//{CRM}/") and not _NODE_RE.fullmatch(parent[len(CRM) + 3:]):
            parent = None  # projects/- and projects/_ name no project
        return ResourceName(f"//{service}/{relative}", service, relative, rtype, parent)
    if service == CRM and relative.count("/") == 1:
        raise _bad(field, name, "expected organizations/NUMBER, folders/NUMBER or projects/PROJECT_ID_OR_NUMBER "
                                "(project ids are 6-30 characters: lower-case letters, digits and hyphens, "
                                "starting with a letter)")
    return ResourceName(f"//{service}/{relative}", service, relative, f"{service}/Unknown",
                        container_full_name(relative))


def parse_resource(name: object, field: str = "resource") -> ResourceName:
    """Parse a full resource name (or a hierarchy short name) into its canonical form."""
    if type(name) is str:
        hit = _RESOURCE_CACHE.get(name)
        if hit is not None:
            return hit
    elif not isinstance(name, str):
        raise _bad(field, name, "expected a string")
    return _parse_resource_cached(name, field)


def container_full_name(relative: str) -> str | None:
    """The hierarchy node a relative name lives under (``projects/p/x/y`` → project p), or None."""
    parts = relative.split("/", 2)
    if len(parts) >= 3 and _NODE_RE.fullmatch(f"{parts[0]}/{parts[1]}"):
        return f"//{CRM}/{parts[0]}/{parts[1]}"
    return None


# --------------------------------------------------------------------------------------------- members

_SIMPLE_MEMBERS = ("allUsers", "allAuthenticatedUsers")
_EMAIL_KINDS = ("user", "group", "serviceAccount")
_CONVENIENCE = ("projectOwner", "projectEditor", "projectViewer")
_POOL = r"[a-z0-9-]{4,63}"
_PRINCIPAL_RE = re.compile(
    rf"^principal://iam\.googleapis\.com/projects/{_NUMBER}/locations/global/workloadIdentityPools/{_POOL}"
    r"/subject/\S{1,127}$"
    rf"|^principal://iam\.googleapis\.com/locations/global/workforcePools/{_POOL}/subject/\S{{1,127}}$"
)
_PRINCIPAL_SET_RE = re.compile(
    rf"^principalSet://iam\.googleapis\.com/projects/{_NUMBER}/locations/global/workloadIdentityPools/{_POOL}"
    r"/(?:\*|group/\S{1,127}|attribute\.[a-z0-9_]{1,63}/\S{1,127})$"
    rf"|^principalSet://iam\.googleapis\.com/locations/global/workforcePools/{_POOL}"
    r"/(?:\*|group/\S{1,127}|attribute\.[a-z0-9_]{1,63}/\S{1,127})$"
    r"|^principalSet://goog/cloudIdentityCustomerId/C[0-9a-z]{1,20}$"
    rf"|^principalSet://cloudresourcemanager\.googleapis\.com/(?:projects|folders|organizations)/{_NUMBER}"
    r"/type/ServiceAccount$"
)


def member_email(member: str) -> str | None:
    """The email inside ``user:``/``group:``/``serviceAccount:`` members, else None."""
    kind, sep, rest = member.partition(":")
    return rest if sep and kind in _EMAIL_KINDS else None


def _parse_member_cached(member: str, field: str) -> str:
    hit = _MEMBER_CACHE.get(member)
    if hit is None:
        hit = _parse_member_uncached(member, field)
        if len(_MEMBER_CACHE) >= _CACHE_LIMIT:
            _MEMBER_CACHE.clear()
        _MEMBER_CACHE[member] = hit
    return hit


def _parse_member_uncached(member: str, field: str) -> str:
    if member in _SIMPLE_MEMBERS:
        return member
    if member.startswith("principal://"):
        if not _PRINCIPAL_RE.fullmatch(member):
            alias = _V2_PRINCIPAL_ALIASES(member)
            if alias is not None:
                return alias
            raise _bad(field, member, "principal:// identifiers name a workload or workforce pool subject, "
                                      "e.g. 'principal://iam.googleapis.com/projects/NUMBER/locations/global/"
                                      "workloadIdentityPools/POOL/subject/SUBJECT'")
        return member
    if member.startswith("principalSet://"):
        alias = _V2_PRINCIPAL_ALIASES(member)
        if alias is not None:
            return alias
        if not _PRINCIPAL_SET_RE.fullmatch(member):
            raise _bad(field, member, "principalSet:// identifiers name a pool's '*', 'group/G' or "
                                      "'attribute.A/V' set")
        return member
    kind, sep, rest = member.partition(":")
    if not sep:
        raise _bad(field, member, "members look like 'user:EMAIL', 'group:EMAIL', 'serviceAccount:EMAIL', "
                                  "'domain:DOMAIN', 'allUsers' or 'allAuthenticatedUsers'")
    if kind in _EMAIL_KINDS:
        email = rest.lower()
        if not _EMAIL_RE.fullmatch(email):
            raise _bad(field, member, f"'{kind}:' must be followed by an email address")
        return f"{kind}:{email}"
    if kind == "domain":
        domain = rest.lower()
        if not _DOMAIN_RE.fullmatch(domain):
            raise _bad(field, member, "'domain:' must be followed by a DNS domain such as example.com")
        return f"domain:{domain}"
    if kind == "deleted":
        inner, q, uid = rest.partition("?uid=")
        if not q or not (uid.isascii() and uid.isdigit()):
            raise _bad(field, member, "deleted members look like 'deleted:user:EMAIL?uid=NUMBER'")
        return f"deleted:{_parse_member_cached(inner, field)}?uid={uid}"
    if kind in _CONVENIENCE:
        if not re.fullmatch(rf"^(?:{_PROJECT_ID}|{_NUMBER})$", rest):
            raise _bad(field, member, f"'{kind}:' must be followed by a project id")
        return f"{kind}:{rest}"
    raise _bad(field, member, f"unknown member type {kind + ':'!r}; use user:, group:, serviceAccount:, "
                              "domain:, principal://, principalSet://, allUsers or allAuthenticatedUsers")


def parse_member(member: object, field: str = "member") -> str:
    """Validate an allow-policy member and return its canonical form (lower-case emails)."""
    if type(member) is str:
        hit = _MEMBER_CACHE.get(member)
        if hit is not None:
            return hit
    if not isinstance(member, str):
        raise _bad(field, member, "expected a string")
    if len(member) > 1024:
        raise _bad(field, member, "longer than 1024 characters")
    return _parse_member_cached(member, field)


# ------------------------------------------------------------------------------ IAM v2 (deny) principals

def _V2_PRINCIPAL_ALIASES(ident: str) -> str | None:
    """Map IAM v2 identifiers of Google identities to keycard's member keys."""
    if ident == "principalSet://goog/public:all":
        return "allUsers"
    for prefix, kind in (("principal://goog/subject/", "user"), ("principalSet://goog/group/", "group"),
                         ("principal://iam.googleapis.com/projects/-/serviceAccounts/", "serviceAccount")):
        if ident.startswith(prefix):
            email = ident[len(prefix):].lower()
            return f"{kind}:{email}" if _EMAIL_RE.fullmatch(email) else None
    return None


@lru_cache(maxsize=65536)
def _parse_deny_principal_cached(ident: str, field: str) -> str:
    if ident.startswith("deleted:"):
        inner, q, uid = ident[len("deleted:"):].partition("?uid=")
        if q and uid.isascii() and uid.isdigit():
            return f"deleted:{_parse_deny_principal_cached(inner, field)}?uid={uid}"
        raise _bad(field, ident, "deleted principals look like 'deleted:principal://goog/subject/EMAIL?uid=N'")
    alias = _V2_PRINCIPAL_ALIASES(ident)
    if alias is not None:
        return alias
    if (ident.startswith("principal://") and _PRINCIPAL_RE.fullmatch(ident)) or \
            (ident.startswith("principalSet://") and _PRINCIPAL_SET_RE.fullmatch(ident)):
        return ident
    hint = ""
    kind, sep, rest = ident.partition(":")
    if sep and kind == "user":
        hint = f"; write {'principal://goog/subject/' + rest!r}"
    elif sep and kind == "group":
        hint = f"; write {'principalSet://goog/group/' + rest!r}"
    elif sep and kind == "serviceAccount":
        hint = f"; write {'principal://iam.googleapis.com/projects/-/serviceAccounts/' + rest!r}"
    elif ident in ("allUsers", "allAuthenticatedUsers"):
        hint = "; write 'principalSet://goog/public:all'"
    raise _bad(field, ident, "deny policies take IAM v2 principal identifiers (principal://goog/subject/EMAIL, "
                             "principalSet://goog/group/EMAIL, principalSet://goog/public:all, "
                             f"principal://iam.googleapis.com/projects/-/serviceAccounts/EMAIL, pool sets){hint}")


def parse_deny_principal(ident: object, field: str = "deniedPrincipals") -> str:
    """Validate an IAM v2 principal identifier and return keycard's member key for it."""
    if not isinstance(ident, str) or len(ident) > 1024:
        raise _bad(field, ident, "expected a string of at most 1024 characters")
    return _parse_deny_principal_cached(ident, field)


# ------------------------------------------------------------------------------------------ permissions

@lru_cache(maxsize=65536)
def _parse_permission_cached(permission: str, field: str) -> str:
    if len(permission) > 256 or not _PERMISSION_RE.fullmatch(permission):
        raise _bad(field, permission, "permissions look like 'service.resource.verb', e.g. 'ml.models.get'")
    return permission


def parse_permission(permission: object, field: str = "permission") -> str:
    """Validate an IAM v1 permission name."""
    if not isinstance(permission, str):
        raise _bad(field, permission, "expected a string")
    return _parse_permission_cached(permission, field)


# Service FQDNs whose v1 permission prefix is not the first DNS label.
_FQDN_TO_PREFIX = {"cloudresourcemanager.googleapis.com": "resourcemanager"}
_DENY_PERM_RE = re.compile(rf"^([a-z0-9][a-z0-9-]*(?:\.[a-z0-9-]+)+)/(\*|{_PERM_PART})\.(\*|{_PERM_PART})$")


def parse_deny_permission(permission: object, field: str = "deniedPermissions") -> tuple[str, str, str]:
    """Parse an IAM v2 permission ``SERVICE_FQDN/RESOURCE.VERB`` into (v1 prefix, resource, verb).

    ``resource`` or ``verb`` may be ``*`` (Google's permission groups ``SERVICE/RESOURCE.*``,
    ``SERVICE/*.VERB`` and ``SERVICE/*.*``); ``SERVICE/*`` is read as ``SERVICE/*.*``.
    """
    if not isinstance(permission, str) or len(permission) > 256:
        raise _bad(field, permission, "expected a string of at most 256 characters")
    if permission.endswith("/*"):
        permission = permission + ".*"
    m = _DENY_PERM_RE.fullmatch(permission)
    if m is None or not m.group(1).endswith(".googleapis.com"):
        raise _bad(field, permission, "deny policies take IAM v2 permissions 'SERVICE.googleapis.com/RESOURCE.VERB',"
                                      " e.g. 'ml.googleapis.com/models.delete'; RESOURCE or VERB may be '*'")
    fqdn = m.group(1)
    prefix = _FQDN_TO_PREFIX.get(fqdn, fqdn.split(".", 1)[0])
    return prefix, m.group(2), m.group(3)


# ---------------------------------------------------------------------------------------------- roles

_ROLE_RE = re.compile(
    rf"^roles/([A-Za-z0-9_.]{{1,128}})$"
    rf"|^projects/({_PROJECT_ID}|{_NUMBER})/roles/([A-Za-z0-9_.]{{1,64}})$"
    rf"|^organizations/({_NUMBER})/roles/([A-Za-z0-9_.]{{1,64}})$"
)


def parse_role_name(role: object, field: str = "role") -> str:
    """Validate a role name: ``roles/R``, ``projects/P/roles/R`` or ``organizations/O/roles/R``."""
    if type(role) is str and role in _ROLE_CACHE:
        return role
    if not isinstance(role, str) or not _ROLE_RE.fullmatch(role):
        raise _bad(field, role, "roles are named 'roles/NAME', 'projects/PROJECT/roles/NAME' or "
                                "'organizations/NUMBER/roles/NAME'")
    if len(_ROLE_CACHE) < _CACHE_LIMIT:
        _ROLE_CACHE.add(role)
    return role


def role_scope(role: str) -> str | None:
    """Full name of the project/organization a custom role belongs to; None for predefined roles."""
    if role.startswith("roles/"):
        return None
    kind, ident, _ = role.split("/", 2)
    return f"//{CRM}/{kind}/{ident}"


def is_valid_role_id(role_id: str) -> bool:
    return bool(_ROLE_ID_RE.fullmatch(role_id))
