"""keycard's built-in catalog of Google Cloud predefined roles.

The roles live as YAML data files in ``keycard/catalog/roles/``, one file per service family, each a list of
roles in the shape of ``gcloud iam roles describe --format=json``: ``name``, ``title``, ``description``,
``stage`` and a sorted ``includedPermissions``. Each role holds exactly Google Cloud's permissions for the
services keycard implements (:data:`SERVICES`); see docs/ROLES.md.
"""

from __future__ import annotations

import copy
from functools import cache
from importlib import resources
from typing import Any

import yaml

__all__ = ["ROLE_FILES", "SERVICES", "builtin_permissions", "builtin_roles"]

SERVICES: tuple[str, ...] = (
    "ml",
    "iam",
    "iamcredentials",
    "sts",
    "resourcemanager",
    "storage",
    "logging",
    "iap",
    "orgpolicy",
    "cloudasset",
    "recommender",
    "policysimulator",
)

ROLE_FILES: tuple[str, ...] = (
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
    "keycard.yaml",     # keycard's own roles (roles/keycard.*): Cloud Identity groups administration
)

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_file(filename: str) -> list[dict[str, Any]]:
    text = resources.files(__name__).joinpath("roles", filename).read_text(encoding="utf-8")
    data = yaml.load(text, Loader=_Loader)
    if not isinstance(data, list):
        raise ValueError(f"keycard/catalog/roles/{filename}: expected a list of roles")
    roles: list[dict[str, Any]] = []
    for entry in data:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValueError(f"keycard/catalog/roles/{filename}: every role needs a name")
        perms = entry.get("includedPermissions") or []
        if not isinstance(perms, list) or not all(isinstance(p, str) for p in perms):
            raise ValueError(f"keycard/catalog/roles/{filename}: {entry['name']}: bad includedPermissions")
        roles.append(
            {
                "name": entry["name"],
                "title": str(entry.get("title", "")),
                "description": str(entry.get("description", "")),
                "stage": str(entry.get("stage", "GA")),
                "includedPermissions": sorted(set(perms)),
            }
        )
    return roles


@cache
def _roles() -> tuple[dict[str, Any], ...]:
    roles: list[dict[str, Any]] = []
    for filename in ROLE_FILES:
        roles.extend(_load_file(filename))
    return tuple(roles)


def builtin_roles() -> list[dict[str, Any]]:
    """Every built-in role, in gcloud's role JSON shape; a fresh copy on each call."""
    return copy.deepcopy(list(_roles()))


@cache
def builtin_permissions() -> frozenset[str]:
    """The union of the permissions of all built-in roles."""
    return frozenset(p for role in _roles() for p in role["includedPermissions"])
