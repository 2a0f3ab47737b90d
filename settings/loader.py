"""THE config loader: a dataclass is the schema, YAML gives the values, dotted `--set a.b=c` overrides.

Used by the app (app/config.py), the retrain pipeline (training/config.py) and PPO (training/ppo/config.py):
  - unknown keys are an error naming the full dotted key (a typo must never fall back to a default silently);
  - values are coerced by the field's annotation: YAML booleans stay booleans (a str field refuses `true`/`off`
    unless its `parse` hook says what the boolean means), ints stay whole, a list[str] also takes "a,b";
  - ranges and choices are declared on the field (`field(default=..., metadata=bounds(ge=1))`) and checked
    here, so `max_file_mb: -5` or `concurrency: 0` stop at load time with one line naming the key;
  - every error is one ConfigError line: `<source>: <key> must be ..., got ...`.
Nested dataclass fields are nested sections (`sft.lr`); `values` from YAML and overrides merge key by key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from settings.errors import RagqaError

T = TypeVar("T")


class ConfigError(RagqaError, ValueError):
    """A config file or override is invalid; the message names the key and says what to change."""


def bounds(
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Iterable[Any] | None = None,
    parse: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """Field metadata: the allowed range (ge/gt/le/lt), the allowed values, and a `parse` hook run first.

    (A field with `metadata={"internal": True}` is set by code, never by a config file.)
    """
    meta: dict[str, Any] = {
        k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None
    }
    if choices is not None:
        meta["choices"] = tuple(choices)
    if parse is not None:
        meta["parse"] = parse
    return meta


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML file holding a mapping (an empty file is an empty mapping)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values, got {type(data).__name__}")
    return data


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """`["sft.lr=1e-4", "ppo.total_steps=3"]` -> nested dict with YAML-parsed scalar values."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value (or key=value)")
        dotted, raw = item.split("=", 1)
        parts = [p.strip() for p in dotted.strip().split(".") if p.strip()]
        if not parts:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(
                f"override {item!r}: the value is not valid YAML ({' '.join(str(e).split())})"
            ) from e
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override of {part!r}")
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` laid over `base`, section by section (a nested mapping merges instead of replacing)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def apply(obj: T, values: dict[str, Any], prefix: str = "", *, what: str = "config") -> T:
    """A copy of the dataclass `obj` with `values` set (coerced, range-checked), nested sections recursed.

    `what` names the schema in the unknown-key message ("unknown PPO config key 'lrr'").
    """
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'the config'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(type(obj))
    fields = {
        f.name: f
        for f in dataclasses.fields(obj)  # type: ignore[arg-type]
        if f.init and not f.metadata.get("internal")
    }
    changes: dict[str, Any] = {}
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in fields:
            raise ConfigError(f"unknown {what} key {key!r} (valid keys here: {', '.join(sorted(fields))})")
        tp = hints[name]
        if _is_dataclass_type(tp):
            changes[name] = apply(getattr(obj, name), value, f"{key}.", what=what)
        else:
            changes[name] = check_value(key, value, tp, fields[name].metadata)
    return dataclasses.replace(obj, **changes)  # type: ignore[type-var]


def load(
    schema: type[T] | T,
    *,
    file: Path | None = None,
    values: dict[str, Any] | None = None,
    overrides: Iterable[str] = (),
    prefix: str = "",
    what: str = "config",
) -> T:
    """The defaults of `schema` (a class, or an instance to start from), then `file`, `values`, `overrides`."""
    obj = schema() if isinstance(schema, type) else schema
    merged: dict[str, Any] = read_yaml(file) if file is not None else {}
    merged = merge(merged, values or {})
    merged = merge(merged, parse_overrides(overrides))
    return apply(obj, merged, prefix, what=what)


def check_value(key: str, value: Any, tp: Any, meta: Any = None) -> Any:
    """One value: the field's `parse` hook, then its type, then its range and choices."""
    meta = meta or {}
    if "parse" in meta:
        try:
            value = meta["parse"](value)
        except ValueError as e:  # the hook's own message, on one line, under the key
            raise ConfigError(f"{key}: {e}") from e
    value = _coerce(key, value, tp)
    if value is not None:
        _check_range(key, value, meta)
    return value


def _check_range(key: str, value: Any, meta: Any) -> None:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        quoted = [repr(c) for c in choices]
        allowed = (  # a short list reads as a sentence; a long one as a list
            f"{', '.join(quoted[:-1])} or {quoted[-1]}"
            if len(choices) <= 3
            else f"one of {', '.join(map(str, choices))}"
        )
        raise ConfigError(f"{key} must be {allowed}, got {value!r}")
    if not isinstance(value, int | float) or isinstance(value, bool):
        return
    if isinstance(value, float) and math.isnan(value):
        raise ConfigError(f"{key} must be a number, got nan")
    for op, ok, word in (
        ("ge", lambda v, b: v >= b, ">="),
        ("gt", lambda v, b: v > b, ">"),
        ("le", lambda v, b: v <= b, "<="),
        ("lt", lambda v, b: v < b, "<"),
    ):
        if op in meta and not ok(value, meta[op]):
            raise ConfigError(f"{key} must be {_describe_range(meta) or f'{word} {meta[op]}'}, got {value!r}")


def _describe_range(meta: Any) -> str:
    low = ("[", meta["ge"]) if "ge" in meta else ("(", meta["gt"]) if "gt" in meta else None
    high = ("]", meta["le"]) if "le" in meta else (")", meta["lt"]) if "lt" in meta else None
    if low and high:
        return f"within {low[0]}{low[1]}, {high[1]}{high[0]}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {low[1]}"
    if high:
        return f"{'<=' if high[0] == ']' else '<'} {high[1]}"
    return ""


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check/convert one value against its annotation; strings from `--set` were already YAML-parsed."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key} may not be null")
        non_none = [a for a in args if a is not type(None)]
        return _coerce(key, value, non_none[0])
    if value is None:
        raise ConfigError(f"{key} may not be null")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple) or any(
            isinstance(v, dict | list | bool) or not str(v).strip() for v in value
        ):
            raise ConfigError(f"{key} must be a list of names, got {value!r}")
        return origin(str(v) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        if int(value) != value:
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        # A YAML boolean is not a string: `gguf: off` arrives as False. Fields where a boolean means something
        # say so with a `parse` hook; elsewhere it is an error rather than the string "false".
        if isinstance(value, bool | dict | list):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    return value
