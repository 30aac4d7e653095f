"""Reading Cloud Asset Inventory export records into (name, type, parent, policy) rows.

``gcloud asset export`` writes newline-delimited JSON; each record has ``name``,
``assetType``/``asset_type``, ``ancestors``, ``resource`` and/or
``iamPolicy``/``iam_policy``. A resource exported twice (once with its resource
data, once with its policy) is merged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from keycard import names
from keycard.errors import InvalidArgument

__all__ = ["AssetRow", "read_assets"]


@dataclass(slots=True)
class AssetRow:
    name: str                                  # canonical full resource name
    type: str
    ancestors: list[str] = field(default_factory=list)   # e.g. ["projects/123", "folders/4", "organizations/1"]
    parent: str | None = None                  # explicit parent full name, when the record gives it
    policy: Mapping[str, Any] | None = None
    project_id: str | None = None              # projects: their id and number (names may use either)
    project_number: str | None = None
    field: str = ""


def _get(obj: Mapping[str, Any], camel: str) -> Any:
    if camel in obj:
        return obj[camel]
    snake = "".join("_" + c.lower() if c.isupper() else c for c in camel)
    return obj.get(snake)


def read_assets(records: Iterable[object]) -> dict[str, AssetRow]:
    rows: dict[str, AssetRow] = {}
    for i, rec in enumerate(records):
        fld = f"assets[{i}]"
        if not isinstance(rec, Mapping):
            raise InvalidArgument(f"Invalid {fld}: each asset must be a JSON object.", field=fld)
        rn = names.parse_resource(rec.get("name"), f"{fld}.name")
        atype = _get(rec, "assetType")
        if atype is not None and not isinstance(atype, str):
            raise InvalidArgument(f"Invalid {fld}.assetType: expected a string.", field=f"{fld}.assetType")
        row = rows.get(rn.full)
        if row is None:
            row = rows[rn.full] = AssetRow(rn.full, rn.type, field=fld)
        if atype and rn.type.endswith("/Unknown"):
            row.type = atype
        anc = rec.get("ancestors")
        if anc is not None:
            if not isinstance(anc, list) or not all(isinstance(a, str) for a in anc):
                raise InvalidArgument(f"Invalid {fld}.ancestors: expected a list of names such as "
                                      "'projects/123'.", field=f"{fld}.ancestors")
            for j, a in enumerate(anc):
                names.parse_resource(a, f"{fld}.ancestors[{j}]")
            row.ancestors = list(anc)
        res = rec.get("resource")
        if res is not None:
            if not isinstance(res, Mapping):
                raise InvalidArgument(f"Invalid {fld}.resource: expected a JSON object.", field=f"{fld}.resource")
            parent = res.get("parent")
            if isinstance(parent, str) and parent:
                row.parent = names.parse_resource(parent, f"{fld}.resource.parent").full
            data = res.get("data")
            if isinstance(data, Mapping) and rn.type == f"{names.CRM}/Project":
                pid = _get(data, "projectId")
                if isinstance(pid, str):
                    row.project_id = pid
                pnum = _get(data, "projectNumber")
                if isinstance(pnum, str | int) and str(pnum).isdigit():
                    row.project_number = str(pnum)
        pol = _get(rec, "iamPolicy")
        if pol is not None:
            if not isinstance(pol, Mapping):
                raise InvalidArgument(f"Invalid {fld}.iamPolicy: expected a JSON object.", field=f"{fld}.iamPolicy")
            row.policy = pol
    return rows
