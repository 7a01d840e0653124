"""YAML config files and `--set section.key=value` overrides, shared by every config that has sections."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from lmforge.errors import LmforgeError

YAML_ERRORS = (yaml.YAMLError, ValueError, RecursionError)  # ValueError: 2001-13-45 as a date; deep nesting


class DuplicateKey(yaml.YAMLError):
    """A key given twice in one mapping: PyYAML would keep the last silently, and the first edit would be lost."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that raises DuplicateKey."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # <<: *defaults may be overridden, as YAML intends
                continue
            key, line = self.construct_object(key_node, deep=deep), key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first is not None:
                raise DuplicateKey(f"key {key!r} appears twice (line {first}, and again on line {line})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def missing(path: Path, what: str) -> LmforgeError:
    """The error for a config path that is not a file: a directory is called one, anything else not found."""
    kind = "is a directory" if path.is_dir() else "not found"
    return LmforgeError(f"config {str(path)!r} {kind}: give {what}")


def read_yaml(path: Path, what: str) -> dict:
    """A YAML file that must hold a mapping (`what` names its sections for the error)."""
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except DuplicateKey as e:
        raise LmforgeError(f"{path}: {e}; keep one of them") from None
    except YAML_ERRORS as e:  # UnicodeDecodeError is a ValueError
        raise LmforgeError(f"{path}: not valid YAML ({(str(e) or type(e).__name__).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise LmforgeError(f"{path}: a config is a mapping with sections {what}")
    return raw


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except YAML_ERRORS:
        return text


def name_in(kind: type, key: str) -> bool:
    return key in {f.name for f in fields(kind)}


def apply_override(raw: dict, assignment: str, sections: dict[str, type]) -> None:
    """Applies `section.key=value` (or `key=value` when one section only has the key) to a raw config dict."""
    example = f"{next(iter(sections))}.{fields(next(iter(sections.values())))[0].name}=..."
    if "=" not in assignment:
        raise LmforgeError(f"--set {assignment!r}: write it as key=value, for example {example}")
    key, text = assignment.split("=", 1)
    key = key.strip()
    if "." in key:
        section, name = key.split(".", 1)
    else:
        owners = [s for s, kind in sections.items() if name_in(kind, key)]
        if len(owners) != 1:
            hint = "no section has it" if not owners else f"it is in {' and '.join(owners)}"
            raise LmforgeError(f"--set {key}: {hint}; write section.key, for example {example}")
        section, name = owners[0], key
    if section == "family":
        raise LmforgeError("--set family is not an override; pick a config of that family instead")
    raw.setdefault(section, {})
    if not isinstance(raw[section], dict):
        raise LmforgeError(f"--set {key}: section {section!r} is not a mapping")
    raw[section][name] = _parse_value(text)


def build_section(kind: type, values: dict, section: str, where: str):
    """The section's checked dataclass; an unknown key is one line listing the valid ones."""
    if not isinstance(values, dict):
        raise LmforgeError(f"{where}: section {section!r} must be a mapping of field: value")
    known = {f.name for f in fields(kind)}
    for key in values:
        if key not in known:
            raise LmforgeError(
                f"{where}: unknown key {section}.{key}; valid keys of {section}: {', '.join(sorted(known))}"
            )
    return kind(**values)
