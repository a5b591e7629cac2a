"""Per-run copies of an upstream method's YAML config: read, change a few values, write back.

Parsed with PyYAML rather than edited as text, so a value is found however it is quoted or nested.
The copy loses the upstream's comments; the key order and the short ``[a, b]`` lists stay.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from personalive_cli.errors import UserError


def load_config(text: str, source: str | Path = "config") -> dict[str, Any]:
    """The mapping at the top of an upstream YAML config (a UserError names the file when it is not one)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"{source} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{source} holds a {type(data).__name__}, not the mapping an upstream config is")
    return data


class _ConfigDumper(yaml.SafeDumper):
    """Block-style mappings, and lists of scalars on one line (``size: [512, 512]``) as the upstream
    configs write them (PyYAML's flow option would put small mappings on one line too)."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flat = all(not isinstance(x, (dict, list)) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


_ConfigDumper.add_representer(list, _represent_list)


def dump_config(data: dict[str, Any]) -> str:
    return yaml.dump(data, Dumper=_ConfigDumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


def repoint(value: Any, old_prefix: str, new_prefix: str) -> Any:
    """``value`` with every string that starts with ``old_prefix`` (at any depth) starting with
    ``new_prefix`` instead: how a config's model paths are moved into a user's weights folder."""
    if isinstance(value, str):
        return new_prefix + value[len(old_prefix):] if value.startswith(old_prefix) else value
    if isinstance(value, dict):
        return {k: repoint(v, old_prefix, new_prefix) for k, v in value.items()}
    if isinstance(value, list):
        return [repoint(v, old_prefix, new_prefix) for v in value]
    return value


def weights_prefix(weights: str | Path) -> str:
    """A weights folder as a path prefix ending in one slash."""
    return str(Path(weights)).rstrip("/") + "/"
