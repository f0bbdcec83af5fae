"""Config files of both trainers: YAML overrides of a config dataclass, `key.sub=value` overrides on top, and
the resolved config written back as `config.yaml`. Values are type-checked before any range check."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import yaml

from .checks import check_type


class _Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, which reads `1e-4` as a string; we want the float every user means."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


# YAML 1.1 also reads yes/no/on/off as booleans, which turns `mixed_precision: no` into False: keep only
# true/false (YAML 1.2).
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in _Loader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _yaml_load(text: str):
    value = yaml.load(text, Loader=_Loader)
    # integers stay integers: the float resolver above also matches "3"
    if isinstance(value, float) and re.fullmatch(r"[-+]?\d+", text.strip()):
        return int(text.strip())
    return value


def _build(cls, values: dict, prefix: str = ""):
    """Instantiate dataclass `cls` from a nested dict; unknown keys are errors that list the known ones, and a
    value of the wrong type (`max_steps=ten`, `optim.betas=0.9`) is an error naming the field and the type, before
    any range check or model load. A field whose default is a dataclass is a section, built recursively."""
    if not isinstance(values, dict):
        raise ValueError(f"config section {prefix.rstrip('.') or 'root'} must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation that cannot be resolved: leave the types unchecked
        hints = {}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ValueError(f"unknown config key '{prefix}{key}'; known: {', '.join(fields)}")
        factory = fields[key].default_factory
        section = factory() if factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(section):
            kwargs[key] = _build(type(section), value, f"{prefix}{key}.")
        else:
            if key in hints:
                check_type(f"{prefix}{key}", value, hints[key])
            kwargs[key] = value
    return cls(**kwargs)


def apply_override(tree: dict, override: str) -> None:
    """Apply one `key.sub=value` override to a nested dict; the value is parsed as YAML (numbers, lists...)."""
    if "=" not in override:
        raise ValueError(f"override {override!r} is not key=value (e.g. optim.lr=1e-4)")
    key, raw = override.split("=", 1)
    node = tree
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {override!r}: {part!r} is not a section")
    node[parts[-1]] = _yaml_load(raw)


def load_config(path: str | Path | None, overrides: list[str], cls):
    """Read a YAML config (overrides of the defaults of the dataclass `cls`), apply `key=value` overrides, and
    build and validate `cls`."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist")
        tree = _yaml_load(path.read_text()) or {}
    for override in overrides:
        apply_override(tree, override)
    return _build(cls, tree)


def plain_dict(config) -> dict:
    """A config dataclass as the nested dict that `save_config` writes (tuples as lists)."""

    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))


def config_value(tree: dict, dotted: str):
    """The value at `dotted` ("optim.lr") in a config's nested dict (`plain_dict`, or a saved config.yaml); None
    where a part is missing."""
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def save_config(config, path: str | Path) -> None:
    """Write a config dataclass as YAML (tuples as lists), atomically (a kill leaves the old file or the new)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(plain_dict(config), sort_keys=False))
    tmp.replace(path)
