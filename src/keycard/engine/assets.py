"""Reading Cloud Asset Inventory export records, streaming, into compact rows.

``gcloud asset export`` writes newline-delimited JSON; each record has ``name``,
``assetType``/``asset_type``, ``ancestors``, ``resource`` and/or
``iamPolicy``/``iam_policy``. A resource exported twice (once with its resource data,
once with its policy) is merged. Records are parsed as they stream by — policies straight
into frozen :class:`AllowPolicy` objects — so the raw JSON of a million bindings is never
held in memory at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from keycard import names
from keycard.engine.model import AllowPolicy, parse_allow_policy
from keycard.errors import InvalidArgument

__all__ = ["AssetRow", "read_assets"]


@dataclass(slots=True)
class AssetRow:
    name: str                                  # canonical full resource name
    type: str
    field: str                                 # "assets[i]" of the first record, for errors
    own_ancestor: str | None = None            # ancestors[0] when the record lists ancestors
    up_ancestor: str | None = None             # ancestors[1]
    parent: str | None = None                  # explicit parent full name, when the record gives it
    policy: AllowPolicy | None = None
    policy_field: str = ""
    project_id: str | None = None              # projects: their id and number (names may use either)
    project_number: str | None = None


def _get(obj: Mapping[str, Any], camel: str, snake: str) -> Any:
    v = obj.get(camel)
    return obj.get(snake) if v is None else v


def read_assets(records: Iterable[object]) -> dict[str, AssetRow]:
    rows: dict[str, AssetRow] = {}
    seen_ancestors: dict[str, str] = {}           # raw ancestor → validated (and interned) string
    for i, rec in enumerate(records):
        if type(rec) is not dict and not isinstance(rec, Mapping):
            raise InvalidArgument(f"Invalid assets[{i}]: each asset must be a JSON object.", field=f"assets[{i}]")
        rn = names.parse_resource(rec.get("name"), f"assets[{i}].name")
        atype = _get(rec, "assetType", "asset_type")
        if atype is not None and not isinstance(atype, str):
            raise InvalidArgument(f"Invalid assets[{i}].assetType: expected a string.",
                                  field=f"assets[{i}].assetType")
        row = rows.get(rn.full)
        if row is None:
            row = rows[rn.full] = AssetRow(rn.full, rn.type, f"assets[{i}]")
        if atype and rn.type.endswith("/Unknown"):
            row.type = atype
        anc = rec.get("ancestors")
        if anc is not None:
            if type(anc) is not list:
                raise InvalidArgument(f"Invalid assets[{i}].ancestors: expected a list of names such as "
                                      "'projects/123'.", field=f"assets[{i}].ancestors")
            for j, a in enumerate(anc[:2]):
                ok = seen_ancestors.get(a) if type(a) is str else None
                if ok is None:
                    if not isinstance(a, str):
                        raise InvalidArgument(f"Invalid assets[{i}].ancestors: expected a list of names such as "
                                              "'projects/123'.", field=f"assets[{i}].ancestors")
                    names.parse_resource(a, f"assets[{i}].ancestors[{j}]")
                    ok = seen_ancestors[a] = a
                if j == 0:
                    row.own_ancestor = ok
                else:
                    row.up_ancestor = ok
            for j, a in enumerate(anc[2:], 2):
                if type(a) is not str:
                    raise InvalidArgument(f"Invalid assets[{i}].ancestors: expected a list of names such as "
                                          "'projects/123'.", field=f"assets[{i}].ancestors")
                if a not in seen_ancestors:
                    names.parse_resource(a, f"assets[{i}].ancestors[{j}]")
                    seen_ancestors[a] = a
        res = rec.get("resource")
        if res is not None:
            if not isinstance(res, Mapping):
                raise InvalidArgument(f"Invalid assets[{i}].resource: expected a JSON object.",
                                      field=f"assets[{i}].resource")
            parent = res.get("parent")
            if isinstance(parent, str) and parent:
                row.parent = names.parse_resource(parent, f"assets[{i}].resource.parent").full
            data = res.get("data")
            if isinstance(data, Mapping) and rn.type == f"{names.CRM}/Project":
                pid = _get(data, "projectId", "project_id")
                if isinstance(pid, str):
                    names.parse_resource(f"projects/{pid}", f"assets[{i}].resource.data.projectId")
                    row.project_id = pid
                pnum = _get(data, "projectNumber", "project_number")
                if isinstance(pnum, str | int) and not isinstance(pnum, bool) and str(pnum).isascii() \
                        and str(pnum).isdigit():
                    row.project_number = str(pnum)
        pol = _get(rec, "iamPolicy", "iam_policy")
        if pol is not None:
            row.policy_field = f"assets[{i}].iamPolicy"
            row.policy = parse_allow_policy(pol, row.policy_field, lenient_version=True)
    return rows
