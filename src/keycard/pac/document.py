"""Reading policy documents (YAML or JSON; one file or a directory of them) into a State.

Every error names the file, the line and the field, and says what to write instead; nothing is
half-read: a document either loads whole or raises ``DocumentError``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from keycard import names
from keycard.engine.model import ROLE_STAGES, parse_allow_policy, parse_deny_policy
from keycard.errors import InvalidArgument, KeycardError
from keycard.pac.model import (
    ADDITIVE,
    AUTHORITATIVE,
    MODES,
    ORG,
    Bindings,
    GroupSpec,
    Node,
    RoleSpec,
    State,
    Where,
    bindings_from_json,
)

ORG_TOKEN = "organizations/ORG/"     # how a document names its organization's custom roles
DENY_FIELDS = ("deniedPrincipals", "exceptionPrincipals", "deniedPermissions", "exceptionPermissions")
_DISPLAY_RE = re.compile(r"^[\w'\"-](?:[\w '\"-]{0,28}[\w'\"-])?$")
_PROJECT_ID_RE = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_ACCOUNT_RE = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]@([a-z][a-z0-9-]{4,28}[a-z0-9])\.iam\.gserviceaccount\.com$")
_POLICY_ID_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_ROLE_ID_RE = re.compile(r"^[a-zA-Z0-9_.]{3,64}$")
_EMAIL_RE = re.compile(r"^[^@\s:]+@[^@\s:]+\.[^@\s:]+$")

TOP = {"organization", "folders", "projects", "serviceAccounts", "groups"}
NODE_KEYS = {"iam", "bindings", "denyPolicies"}
SECTION_KEYS = {
    "organization": NODE_KEYS | {"roles"},
    "folders": NODE_KEYS | {"path"},
    "projects": NODE_KEYS | {"projectId", "displayName", "parent", "labels", "roles"},
    "serviceAccounts": NODE_KEYS | {"email", "displayName", "description", "disabled"},
    "groups": {"email", "displayName", "description", "members", "membership"},
}


class DocumentError(KeycardError):
    """A policy document that cannot be used as written."""


# ------------------------------------------------------------------------------------- YAML with lines
class _LDict(dict[str, Any]):
    line: int = 0
    lines: dict[str, int]


class _LList(list[Any]):
    line: int = 0
    lines: list[int]


class _Loader(yaml.SafeLoader):
    pass


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> _LDict:
    loader.flatten_mapping(node)
    out = _LDict()
    out.line = node.start_mark.line + 1
    out.lines = {}
    for knode, vnode in node.value:
        key = loader.construct_object(knode, deep=True)
        if not isinstance(key, str):
            raise DocumentError(f"{loader.name}:{knode.start_mark.line + 1}: keys are field names (strings), "
                                f"not {key!r}.")
        if key in out:
            raise DocumentError(f"{loader.name}:{knode.start_mark.line + 1}: field {key!r} is given twice "
                                f"(first on line {out.lines[key]}); keep one.")
        out[key] = loader.construct_object(vnode, deep=True)
        out.lines[key] = knode.start_mark.line + 1
    return out


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> _LList:
    out = _LList(loader.construct_object(v, deep=True) for v in node.value)
    out.line = node.start_mark.line + 1
    out.lines = [v.start_mark.line + 1 for v in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)


def document_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml", ".json") and p.is_file())
        if not files:
            raise DocumentError(f"{path}: no .yaml, .yml or .json files in this directory.")
        return files
    if not path.exists():
        raise DocumentError(f"{path}: no such file or directory. Pass -f FILE or -f DIR.")
    return [path]


def read_documents(paths: Iterable[Path]) -> State:
    """Parse and validate every document; one State, duplicates across files refused."""
    b = _Builder()
    for p in paths:
        for f in document_files(p):
            b.add_file(f)
    b.finish()
    return b.state


def parse_text(text: str, name: str = "<document>") -> State:
    b = _Builder()
    b.add_text(text, name)
    b.finish()
    return b.state


# ------------------------------------------------------------------------------------------ builder
class _Builder:
    def __init__(self) -> None:
        self.state = State()
        self.file = ""

    def err(self, line: int, fld: str, msg: str) -> DocumentError:
        return DocumentError(f"{self.file}:{line}: {fld}: {msg}")

    def add_file(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DocumentError(f"{path}: cannot read it ({e}).") from None
        self.add_text(text, str(path))

    def add_text(self, text: str, name: str) -> None:
        self.file = name
        loader = _Loader(text)
        loader.name = name
        try:
            doc = loader.get_single_data()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark
            where = f"{name}:{mark.line + 1}" if mark is not None else name
            raise DocumentError(f"{where}: not valid YAML/JSON: {e.problem}.") from None
        except yaml.YAMLError as e:
            raise DocumentError(f"{name}: not valid YAML/JSON: {e}.") from None
        finally:
            loader.dispose()
        if doc is None:
            return
        if not isinstance(doc, _LDict):
            raise DocumentError(f"{name}:1: a policy document is a mapping with any of "
                                f"{', '.join(sorted(TOP))}.")
        self._keys(doc, TOP, "document")
        if "organization" in doc:
            self._organization(doc["organization"], doc.lines["organization"])
        for section, fn in (("folders", self._folder), ("projects", self._project),
                            ("serviceAccounts", self._account), ("groups", self._group)):
            if section in doc:
                items = doc[section]
                if not isinstance(items, _LList):
                    raise self.err(doc.lines[section], section, "expected a list.")
                for i, item in enumerate(items):
                    if not isinstance(item, _LDict):
                        raise self.err(items.lines[i], f"{section}[{i}]", "expected a mapping.")
                    self._keys(item, SECTION_KEYS[section], f"{section}[{i}]")
                    fn(item, f"{section}[{i}]")

    def _keys(self, d: _LDict, allowed: set[str], fld: str) -> None:
        for k in d:
            if k not in allowed:
                raise self.err(d.lines[k], f"{fld}.{k}",
                               f"unknown field; expected one of {', '.join(sorted(allowed))}.")

    def _where(self, d: _LDict) -> Where:
        return Where(self.file, d.line)

    def _add_node(self, node: Node) -> None:
        old = self.state.nodes.get(node.id)
        if old is not None:
            raise DocumentError(f"{node.where}: {node.id} is already declared at {old.where}; declare each "
                                "resource once.")
        self.state.nodes[node.id] = node

    def _str(self, d: _LDict, key: str, fld: str, *, required: bool = False, pattern: re.Pattern[str] | None = None,
             what: str = "") -> str:
        v = d.get(key)
        if v is None:
            if required:
                raise self.err(d.line, f"{fld}.{key}", f"required{': ' + what if what else ''}.")
            return ""
        if not isinstance(v, str) or (pattern is not None and not pattern.match(v)):
            raise self.err(d.lines[key], f"{fld}.{key}", f"invalid value {v!r}{': ' + what if what else ''}.")
        return v

    # --------------------------------------------------------------------------------- IAM of a node
    def _iam(self, node: Node, d: _LDict, fld: str) -> None:
        mode = d.get("iam")
        if mode is not None and mode not in MODES:
            raise self.err(d.lines["iam"], f"{fld}.iam", f"invalid value {mode!r}: authoritative (the declared "
                           "bindings and deny policies are all there is) or additive (only add them).")
        if mode is None and ("bindings" not in d and "denyPolicies" not in d):
            return
        node.mode = str(mode or ADDITIVE)
        node.bindings = self._bindings(d, fld) if ("bindings" in d or node.mode == AUTHORITATIVE) else {}
        node.deny = self._deny(d, fld) if ("denyPolicies" in d or node.mode == AUTHORITATIVE) else {}

    def _bindings(self, d: _LDict, fld: str) -> Bindings:
        items = d.get("bindings") or _LList()
        if not isinstance(items, _LList):
            raise self.err(d.lines.get("bindings", d.line), f"{fld}.bindings", "expected a list of "
                           "{role, members, condition}.")
        out: list[dict[str, Any]] = []
        for i, b in enumerate(items):
            bf = f"{fld}.bindings[{i}]"
            if not isinstance(b, _LDict):
                raise self.err(items.lines[i], bf, "expected a mapping {role, members, condition}.")
            self._keys(b, {"role", "members", "condition"}, bf)
            if not isinstance(b.get("members"), list) or not b["members"]:
                raise self.err(b.lines.get("members", b.line), f"{bf}.members", "expected a non-empty list, e.g. "
                               "[user:alice@example.com, group:team@example.com].")
            role = b.get("role")
            check = {**b, "role": role.replace(ORG_TOKEN, "organizations/1/") if isinstance(role, str) else role}
            try:
                pol = parse_allow_policy({"version": 3, "bindings": [check]}, "p")
            except InvalidArgument as e:
                sub = (e.field or "").removeprefix("p.bindings[0]").lstrip(".")
                line = b.lines.get(sub.split(".", 1)[0].split("[", 1)[0], b.line) if sub else b.line
                raise self.err(line, f"{bf}.{sub}" if sub else bf, _msg(e).replace("p.bindings[0]", bf)) from None
            out.append({**pol.bindings[0].to_json(), "role": role})
        return bindings_from_json(out)

    def _deny(self, d: _LDict, fld: str) -> dict[str, dict[str, Any]]:
        items = d.get("denyPolicies") or _LList()
        if not isinstance(items, _LList):
            raise self.err(d.lines.get("denyPolicies", d.line), f"{fld}.denyPolicies", "expected a list of "
                           "{id, displayName, rules}.")
        out: dict[str, dict[str, Any]] = {}
        for i, p in enumerate(items):
            pf = f"{fld}.denyPolicies[{i}]"
            if not isinstance(p, _LDict):
                raise self.err(items.lines[i], pf, "expected a mapping {id, displayName, rules}.")
            self._keys(p, {"id", "displayName", "rules"}, pf)
            pid = self._str(p, "id", pf, required=True, pattern=_POLICY_ID_RE,
                            what="lower-case letters, digits and hyphens, starting with a letter")
            if pid in out:
                raise self.err(p.lines["id"], f"{pf}.id", f"deny policy {pid!r} is declared twice on this resource.")
            body = {"displayName": p.get("displayName") or "", "rules": p.get("rules") or []}
            try:
                parse_deny_policy(body, "p", name=pid)
            except InvalidArgument as e:
                sub = (e.field or "").removeprefix("p").lstrip(".")
                raise self.err(p.lines.get(sub.split(".", 1)[0].split("[", 1)[0], p.line),
                               f"{pf}.{sub}" if sub else pf, _msg(e).replace("p.rules", f"{pf}.rules")) from None
            out[pid] = normalise_deny(body)
        return out

    def _roles(self, d: _LDict, fld: str, parent: str) -> None:
        items = d.get("roles") or _LList()
        if not isinstance(items, _LList):
            raise self.err(d.lines["roles"], f"{fld}.roles", "expected a list of custom roles.")
        for i, r in enumerate(items):
            rf = f"{fld}.roles[{i}]"
            if not isinstance(r, _LDict):
                raise self.err(items.lines[i], rf, "expected a mapping {roleId, title, permissions, ...}.")
            self._keys(r, {"roleId", "title", "description", "stage", "permissions", "deleted"}, rf)
            rid = self._str(r, "roleId", rf, required=True, pattern=_ROLE_ID_RE,
                            what="3-64 letters, digits, '_' and '.'")
            stage = r.get("stage", "GA")
            if stage not in ROLE_STAGES:
                raise self.err(r.lines.get("stage", r.line), f"{rf}.stage", f"invalid value {stage!r}: one of "
                               f"{', '.join(ROLE_STAGES)}.")
            perms = r.get("permissions") or []
            if not isinstance(perms, list):
                raise self.err(r.lines["permissions"], f"{rf}.permissions", "expected a list of permissions.")
            for j, p in enumerate(perms):
                try:
                    names.parse_permission(p, "permission")
                except InvalidArgument as e:
                    raise self.err(perms.lines[j] if isinstance(perms, _LList) else r.line,
                                   f"{rf}.permissions[{j}]", _msg(e)) from None
            deleted = r.get("deleted", False)
            if not isinstance(deleted, bool):
                raise self.err(r.lines["deleted"], f"{rf}.deleted", "expected true or false.")
            name = f"{parent}/roles/{rid}"
            if name in self.state.roles:
                raise self.err(r.line, rf, f"role {name} is already declared at {self.state.roles[name].where}.")
            self.state.roles[name] = RoleSpec(name, self._str(r, "title", rf), self._str(r, "description", rf),
                                              str(stage), tuple(sorted(set(map(str, perms)))), deleted,
                                              self._where(r))

    # --------------------------------------------------------------------------------------- sections
    def _organization(self, d: object, line: int) -> None:
        if not isinstance(d, _LDict):
            raise self.err(line, "organization", "expected a mapping {iam, bindings, denyPolicies, roles}.")
        self._keys(d, SECTION_KEYS["organization"], "organization")
        node = Node(ORG, "", where=self._where(d))
        self._iam(node, d, "organization")
        self._add_node(node)
        if "roles" in d:
            self._roles(d, "organization", ORG_TOKEN.rstrip("/"))

    def _folder(self, d: _LDict, fld: str) -> None:
        path = self._str(d, "path", fld, required=True, what="display names from the organization down, "
                         "joined by '/', e.g. eng/ml")
        parts = path.split("/")
        for p in parts:
            if not _DISPLAY_RE.match(p):
                raise self.err(d.lines["path"], f"{fld}.path", f"invalid folder display name {p!r}: 1-30 letters, "
                               "digits, spaces, hyphens, underscores, quotes.")
        node = Node("folder", path, parent=ORG if len(parts) == 1 else "folder:" + "/".join(parts[:-1]),
                    attrs={"displayName": parts[-1]}, where=self._where(d))
        self._iam(node, d, fld)
        self._add_node(node)

    def _project(self, d: _LDict, fld: str) -> None:
        pid = self._str(d, "projectId", fld, required=True, pattern=_PROJECT_ID_RE,
                        what="6-30 lower-case letters, digits and hyphens")
        parent = self._str(d, "parent", fld)
        labels = d.get("labels") or {}
        if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in labels.items()):
            raise self.err(d.lines.get("labels", d.line), f"{fld}.labels", "expected a mapping of string labels.")
        attrs: dict[str, Any] = {"displayName": self._str(d, "displayName", fld, pattern=_DISPLAY_RE) or pid,
                                 "labels": dict(labels)}
        node = Node("project", pid, parent=ORG if parent in ("", ORG) else f"folder:{parent.removeprefix('folder:')}",
                    attrs=attrs, where=self._where(d))
        self._iam(node, d, fld)
        self._add_node(node)
        if "roles" in d:
            self._roles(d, fld, f"projects/{pid}")

    def _account(self, d: _LDict, fld: str) -> None:
        email = self._str(d, "email", fld, required=True, pattern=_ACCOUNT_RE,
                          what="ACCOUNT_ID@PROJECT_ID.iam.gserviceaccount.com")
        disabled = d.get("disabled", False)
        if not isinstance(disabled, bool):
            raise self.err(d.lines["disabled"], f"{fld}.disabled", "expected true or false.")
        pid = email.split("@", 1)[1].split(".", 1)[0]
        node = Node("serviceAccount", email, parent=f"project:{pid}",
                    attrs={"displayName": self._str(d, "displayName", fld),
                           "description": self._str(d, "description", fld), "disabled": disabled},
                    where=self._where(d))
        self._iam(node, d, fld)
        if node.deny:
            raise self.err(d.lines["denyPolicies"], f"{fld}.denyPolicies", "deny policies attach to the "
                           "organization, folders and projects, not to service accounts.")
        self._add_node(node)

    def _group(self, d: _LDict, fld: str) -> None:
        email = self._str(d, "email", fld, required=True, pattern=_EMAIL_RE, what="the group's email")
        mode = d.get("membership", AUTHORITATIVE)
        if mode not in MODES:
            raise self.err(d.lines["membership"], f"{fld}.membership", f"invalid value {mode!r}: authoritative "
                           "(exactly these members) or additive (at least these).")
        members = d.get("members") or []
        if not isinstance(members, list):
            raise self.err(d.lines["members"], f"{fld}.members", "expected a list, e.g. [user:bob@example.com].")
        out = set()
        for i, m in enumerate(members):
            line = members.lines[i] if isinstance(members, _LList) else d.line
            if not isinstance(m, str) or not m.startswith(("user:", "serviceAccount:", "group:")) \
                    or not _EMAIL_RE.match(m.split(":", 1)[1]):
                raise self.err(line, f"{fld}.members[{i}]", f"invalid member {m!r}: user:EMAIL, "
                               "serviceAccount:EMAIL or group:EMAIL.")
            out.add(m.split(":", 1)[0] + ":" + m.split(":", 1)[1].lower())
        key = email.lower()
        if key in self.state.groups:
            raise self.err(d.line, fld, f"group {key} is already declared at {self.state.groups[key].where}.")
        self.state.groups[key] = GroupSpec(key, self._str(d, "displayName", fld), self._str(d, "description", fld),
                                           frozenset(out), str(mode), self._where(d))

    def finish(self) -> None:
        """Cross-references: parents declared or existing is checked against the server later."""
        for n in self.state.nodes.values():
            if n.kind == "folder" and n.parent != ORG and n.parent not in self.state.nodes:
                # an undeclared parent folder is fine if the server has it; recorded for the plan to check
                pass


def normalise_deny(body: dict[str, Any]) -> dict[str, Any]:
    """A deny policy's content in one comparable form (empty lists dropped, lists sorted)."""
    rules = []
    for r in body.get("rules") or []:
        dr = r.get("denyRule") or {}
        rule: dict[str, Any] = {f: sorted(dr[f]) for f in DENY_FIELDS if dr.get(f)}
        cond = dr.get("denialCondition")
        if cond:
            rule["denialCondition"] = {k: cond[k] for k in ("expression", "title", "description") if cond.get(k)}
        out: dict[str, Any] = {"denyRule": rule}
        if r.get("description"):
            out["description"] = r["description"]
        rules.append(out)
    pol: dict[str, Any] = {"rules": rules}
    if body.get("displayName"):
        pol["displayName"] = body["displayName"]
    return pol


def _msg(e: InvalidArgument) -> str:
    text = e.message
    return text.split(": ", 1)[1] if text.startswith("Invalid ") and ": " in text else text
