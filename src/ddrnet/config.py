"""Typed configuration: dataclasses filled from YAML and ``section.key=value`` overrides.

Unknown keys are errors that list the valid ones; values are checked against the field
types (``int``, ``float``, ``bool``, ``str``, ``Literal``, ``X | None``, ``list[X]``,
``tuple[X, ...]`` and nested dataclasses).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ddrnet.errors import DDRNetError, parse_error_summary

T = TypeVar("T")


class ConfigError(DDRNetError, ValueError):
    """A configuration file or override is invalid; the message names the key."""


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {hint}"
        )
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(hint, value, prefix=f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {list(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {hint}")


def from_dict(cls: type[T], values: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking keys and types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(prefix + k for k in unknown)}; valid keys"
            f"{' in ' + prefix.rstrip('.') if prefix else ''}: {', '.join(sorted(fields))}"
            + _did_you_mean(cls, unknown, prefix)
        )
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {error}") from None


def _did_you_mean(cls: type, unknown: list[str], prefix: str) -> str:
    """``"; did you mean train.output_dir?"`` for keys that belong to a section of ``cls``
    (``output_dir=...`` given without its section) or are close to a valid key (a typo)."""
    hints = typing.get_type_hints(cls)
    guesses = []
    for key in unknown:
        sections = [
            name
            for name, hint in hints.items()
            if dataclasses.is_dataclass(hint) and key in {f.name for f in dataclasses.fields(hint)}
        ]
        close = difflib.get_close_matches(key, list(hints), n=1)
        guesses += [f"{section}.{key}" for section in sections] or [prefix + c for c in close]
    return f"; did you mean {' or '.join(guesses)}?" if guesses else ""


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a dataclass instance (tuples become lists), for YAML/JSON."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def apply_overrides(values: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested mapping."""
    values = yaml.safe_load(yaml.safe_dump(values)) or {}
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r} must look like section.key=value")
        dotted, raw = override.split("=", 1)
        keys = dotted.strip().split(".")
        try:
            parsed = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as error:
            raise ConfigError(
                f"override {override!r}: cannot parse value ({parse_error_summary(error)})"
            ) from None
        node = values
        for depth, key in enumerate(keys[:-1]):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                where = ".".join(keys[: depth + 1])
                raise ConfigError(
                    f"override {override!r}: {where} is not a section (it is {node!r})"
                )
        node[keys[-1]] = parsed
    return values


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the last
    silently, so a recipe with two ``lr:`` lines would train with the second without a word."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    loader.flatten_mapping(node)  # merge keys (<<) first, as the safe constructor does
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` of a recipe or classes file, refusing duplicate keys (a
    ``yaml.YAMLError`` whose mark names the second)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def read_text(path: str | Path, what: str, error: type[DDRNetError] = ConfigError) -> str:
    """The UTF-8 text of the file ``path`` (without a byte-order mark, which Windows editors
    write); ``error`` naming it (as ``what PATH``) when it is a folder or not UTF-8 text (a
    file saved as UTF-16 or Latin-1). Check that it exists first: each caller has its own
    words for a missing file."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{what} {path} is a folder, not a file")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as problem:
        # The codec decodes what follows a byte-order mark: its offsets start after it.
        offset = problem.start + len(data) - len(problem.object)
        raise error(
            f"{what} {path}: not UTF-8 text (byte 0x{data[offset]:02x} at offset {offset}: "
            f"{problem.reason}); save it as UTF-8"
        ) from None


def read_json(path: str | Path, what: str, error: type[DDRNetError] = ConfigError) -> Any:
    """The content of the JSON file ``path`` (``read_text``); ``error`` naming it (as ``what
    PATH``) and where the JSON breaks when it does not parse."""
    text = read_text(path, what, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as problem:
        raise error(f"{what} {path}: not JSON ({parse_error_summary(problem)})") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping of sections of the YAML file ``path``; a ``ConfigError`` naming the file
    when it is missing, a folder, not UTF-8 text, not YAML, empty or not a mapping."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    text = read_text(path, "config file")
    try:
        values = parse_yaml(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML ({parse_error_summary(error)})") from None
    if values is None:  # an empty or cut-off file would train the built-in defaults
        raise ConfigError(f"{path}: empty (no sections): a recipe sets at least one")
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return values


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Read ``cls`` from a YAML file (or its defaults) and apply command-line overrides; an
    invalid key or value is a ``ConfigError`` naming the file or the override it comes from."""
    values = load_yaml(path) if path is not None else {}
    merged = apply_overrides(values, overrides)  # its errors name the override already
    try:
        return from_dict(cls, merged)
    except ConfigError as error:
        raise ConfigError(_blamed(cls, values, path, overrides, str(error))) from None


def _blamed(
    cls: type,
    values: dict[str, Any],
    path: str | Path | None,
    overrides: Sequence[str],
    message: str,
) -> str:
    """``message``, an error of ``cls`` built from the file's ``values`` and all ``overrides``,
    prefixed with its source: the file (``path``; nothing for the defaults) when the file
    alone gives it, else the first override after which it appears. The same message, not
    just any error: an override that a later one completes (a cross-field setting) is no
    culprit."""
    for count in range(len(overrides) + 1):
        try:
            from_dict(cls, apply_overrides(values, overrides[:count]))
        except ConfigError as error:
            if str(error) == message:
                break
    if count == 0:
        return f"{path}: {message}" if path is not None else message
    return f"override {overrides[count - 1]!r}: {message}"
