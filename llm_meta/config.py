"""Typed dataclass configs: loaded from YAML, overridden from the command line as `a.b=value`.

Every recipe owns one dataclass; nested sections are dataclasses too. Unknown keys and
wrong value types are errors that name the key (with the closest valid key as a hint),
because a silently ignored typo in a config costs a user a whole meta-training run.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from llm_meta.errors import ConfigError  # noqa: F401 (raised here; importable from here too)

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """YAML with 1.2's booleans: only true/false (any case) are booleans. YAML 1.1 also reads
    yes/no/on/off as booleans, which turned the words of this toolkit's choices
    (`select_start=off`, `mixed_precision=no`) into False and then into a type error."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def parse_yaml(text: str) -> Any:
    """A YAML document or value, booleans as in YAML 1.2 (`_Loader`). Raises yaml.YAMLError."""
    return yaml.load(text, Loader=_Loader)


# Settings that only the person running the command can give, never a file (a config someone sent,
# or a folder's recorded config): they decide whether code runs.
CALLER_ONLY = {"trust_remote_code": "running a model repo's own code is allowed only by the person running the "
                                    "command: pass --trust-remote-code (Python: trust_remote_code=True)",
               "overwrite": "replacing an earlier output is the command's choice: pass --overwrite (Python: set "
                            "cfg.overwrite = True after loading the config)",
               "force": "resuming with a changed config is the command's choice: pass --resume --force (Python: set "
                        "cfg.force = True after loading the config)"}


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build `cls` from an optional YAML file and `key.sub=value` overrides (applied last)."""
    data = read_yaml(resolve_config_path(path)) if path is not None else {}
    return from_dict(cls, _overridden(data, overrides or []))


def with_overrides(cfg: T, overrides: list[str]) -> T:
    """A new config: `cfg` with `key.sub=value` overrides applied (checked as a file's keys are;
    the caller-only keys, which no override may set, keep `cfg`'s values)."""
    data = to_dict(cfg)
    kept = {key: data.pop(key) for key in CALLER_ONLY if key in data}
    return dataclasses.replace(from_dict(type(cfg), _overridden(data, overrides)), **kept)


def _overridden(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        _set_dotted(data, key.strip(), parse_yaml(raw) if raw.strip() else "")
    return data


def resolve_config_path(path: str | Path) -> Path:
    """`path` as given when it exists; else a `recipes/configs/...` path inside the installed
    `recipes` package, so the shipped configs work from any folder after `pip install`."""
    path = Path(path)
    if path.exists() or path.is_absolute() or path.parts[:1] != ("recipes",):
        return path
    import importlib.util

    spec = importlib.util.find_spec("recipes")
    if spec is None or not spec.submodule_search_locations:
        return path
    installed = Path(list(spec.submodule_search_locations)[0]).parent / path
    return installed if installed.exists() else path


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config as a dict. `base: other.yaml` (relative to this file) is read first and this
    file's keys are merged over it, section by section, so variants state only what differs."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' files include each other in a loop")
    loaded = parse_yaml(path.read_text(encoding="utf-8"))
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
    data = loaded or {}
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a file name, got {base!r}")
    return _merge(read_yaml(path.parent / base, (*seen, path.resolve())), data)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Recursively build dataclass `cls` from a plain dict, checking keys and value types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key in CALLER_ONLY:
            raise ConfigError(f"'{prefix}{key}' cannot be set in a config: {CALLER_ONLY[key]}")
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint} (valid: {', '.join(fields)})")
    # A nested section given as a mapping goes on top of its field's own default, not on top of the
    # nested class's defaults: the field's default_factory may differ from them (the benchmark's
    # `adapt` puts label names and chunks into InnerConfig), and `adapt.steps=10` must change the
    # steps only, not silently drop the label names.
    data = {name: _on_default(fields[name], value) for name, value in data.items()}
    kwargs = {name: _coerce(hints[name], data[name], f"{prefix}{name}") for name in fields if name in data}
    return cls(**kwargs)


def _on_default(f: dataclasses.Field, value: Any) -> Any:
    """`value` with field `f`'s own default underneath, when both are sections (mapping, dataclass)."""
    if not isinstance(value, dict) or f.default_factory is dataclasses.MISSING:
        return value
    default = f.default_factory()  # built once per given section
    return {**to_dict(default), **value} if dataclasses.is_dataclass(default) else value


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value if value is not None else {}, prefix=f"{key}.")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' expects a mapping, got {value!r}")
        return {k: _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()} if args else value
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"config key '{key}' must be one of {list(args)}, got {value!r}")
        return value
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads "3e-4" (no dot) as a string; it is meant as a number.
        try:
            return float(value)
        except ValueError:
            pass
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"config key '{key}' expects true/false, got {value!r}")
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"config key '{key}' expects a number, got {value!r}")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(f"config key '{key}' expects {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain data (for metadata files and logs)."""
    return dataclasses.asdict(cfg)
