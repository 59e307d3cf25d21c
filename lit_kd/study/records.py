"""Typed records that read and write JSON: strict reading, field order kept on writing, and a JSON Schema.

A record is a keyword-only dataclass deriving from :class:`Record`. Reading (``from_dict``) refuses unknown and
missing keys, naming the path to them, and builds nested records; writing (``to_dict``) keeps the field order
(``protocol``, the base's field, last) and leaves out optional fields that hold ``None``. Field metadata:
``OPTIONAL`` (may be absent; not written when ``None``), ``ABSENT_OK`` (may be absent in files written before it
existed; always written), ``key("name with spaces")`` (the JSON name of the field). Example::

    @dataclass(kw_only=True)
    class Point(Record):
        x: float
        label: str | None = field(default=None, metadata=OPTIONAL)

    Point.from_dict({"x": 1.0}).to_dict()   # {"x": 1.0}
    Point.from_dict({"x": 1.0, "lable": "a"})   # RecordError: Point: unknown key 'lable' ...
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

OPTIONAL = {"optional": True}
ABSENT_OK = {"absent_ok": True}


def key(name: str, optional: bool = False) -> dict:
    """Field metadata: the field's JSON name (and whether it may be absent)."""
    return {"key": name, "optional": optional}


class RecordError(ValueError):
    """A JSON value that does not fit its record: the message names where and what."""


def _json_name(f: dataclasses.Field) -> str:
    return f.metadata.get("key", f.name)


def _is_record(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Record)


def _nullable_args(tp: Any) -> tuple[list, bool]:
    """The non-None members of a union type, and whether None is one."""
    args = typing.get_args(tp)
    return [a for a in args if a is not type(None)], type(None) in args


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


PRIMITIVES: dict[Any, tuple[type, ...]] = {int: (int,), float: (int, float), str: (str,), bool: (bool,)}


def _read(tp: Any, value: Any, where: str) -> Any:
    if tp is Any:
        return value
    if _is_union(tp):
        args, nullable = _nullable_args(tp)
        if value is None and nullable:
            return None
        errors = []
        for arg in args:
            try:
                return _read(arg, value, where)
            except RecordError as err:
                errors.append(str(err))
        raise RecordError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {tp}")
    if _is_record(tp):
        if not isinstance(value, dict):
            raise RecordError(f"{where}: expected a mapping ({tp.__name__}), got {type(value).__name__}")
        return tp.from_dict(value, where)
    origin = typing.get_origin(tp)
    if origin is list:
        if not isinstance(value, list):
            raise RecordError(f"{where}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [_read(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecordError(f"{where}: expected a mapping, got {type(value).__name__}")
        item = typing.get_args(tp)[1]
        return {k: _read(item, v, f"{where}.{k}") for k, v in value.items()}
    if tp in PRIMITIVES:
        if not isinstance(value, PRIMITIVES[tp]) or (tp is not bool and isinstance(value, bool)):
            raise RecordError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    raise TypeError(f"{where}: no reader for {tp}")


def _write(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, list):
        return [_write(v) for v in value]
    if isinstance(value, dict):
        return {k: _write(v) for k, v in value.items()}
    return value


@dataclasses.dataclass(kw_only=True)
class Record:
    """Base of the typed records. ``protocol`` (optional on every record): the training protocol the record's numbers
    come from (``seed`` or ``held_out``), where a study states it."""

    protocol: str | None = dataclasses.field(default=None, metadata=OPTIONAL)

    @classmethod
    def hints(cls) -> dict[str, Any]:
        if "_own_hints" not in cls.__dict__:
            cls._own_hints = typing.get_type_hints(cls)
        return cls._own_hints

    @classmethod
    def from_dict(cls, data: dict, where: str | None = None) -> Record:
        where = where or cls.__name__
        fields = {_json_name(f): f for f in dataclasses.fields(cls)}
        unknown = [k for k in data if k not in fields]
        if unknown:
            raise RecordError(f"{where}: unknown key {unknown[0]!r} (a {cls.__name__} has {', '.join(fields)})")
        values = {}
        for name, f in fields.items():
            if name not in data:
                if f.metadata.get("optional") or f.metadata.get("absent_ok"):
                    continue
                raise RecordError(f"{where}: missing key {name!r}")
            values[f.name] = _read(cls.hints()[f.name], data[name], f"{where}.{name}")
        return cls(**values)

    def to_dict(self) -> dict:
        out = {}
        fields = dataclasses.fields(self)
        for f in [*fields[1:], fields[0]]:  # ``protocol``, the base's field, is written last
            value = getattr(self, f.name)
            if value is None and f.metadata.get("optional"):
                continue
            out[_json_name(f)] = _write(value)
        return out


def stamp_protocol(value: Any, protocol: str) -> None:
    """Set ``protocol`` on ``value`` and on every record it holds (lists and mappings too) that states none."""
    if isinstance(value, Record):
        if value.protocol is None:
            value.protocol = protocol
        for f in dataclasses.fields(value):
            if f.name != "protocol":
                stamp_protocol(getattr(value, f.name), protocol)
    elif isinstance(value, list):
        for v in value:
            stamp_protocol(v, protocol)
    elif isinstance(value, dict):
        for v in value.values():
            stamp_protocol(v, protocol)


# ------------------------------------------------------------------------------------------------ JSON Schema
def schema(root: type[Record], title: str) -> dict:
    """The JSON Schema (draft 2020-12) of ``root`` and every record it holds, under ``$defs``."""
    defs: dict[str, dict] = {}
    top = _record_schema(root, defs)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": title, **top, "$defs": dict(sorted(defs.items()))}


def _record_schema(cls: type[Record], defs: dict) -> dict:
    props, required = {}, []
    for f in dataclasses.fields(cls):
        props[_json_name(f)] = _schema_of(cls.hints()[f.name], defs)
        if not (f.metadata.get("optional") or f.metadata.get("absent_ok")):
            required.append(_json_name(f))
    doc = " ".join((cls.__doc__ or "").split())
    return {"description": doc, "type": "object", "properties": props, "required": required, "additionalProperties": False}


def _schema_of(tp: Any, defs: dict) -> dict:
    if tp is Any:
        return {}
    if tp is type(None):
        return {"type": "null"}
    if _is_union(tp):
        return {"anyOf": [_schema_of(a, defs) for a in typing.get_args(tp)]}
    if _is_record(tp):
        if tp.__name__ not in defs:
            defs[tp.__name__] = {}  # a placeholder first: a record may hold itself
            defs[tp.__name__] = _record_schema(tp, defs)
        return {"$ref": f"#/$defs/{tp.__name__}"}
    origin = typing.get_origin(tp)
    if origin is list:
        return {"type": "array", "items": _schema_of(typing.get_args(tp)[0], defs)}
    if origin is dict:
        return {"type": "object", "additionalProperties": _schema_of(typing.get_args(tp)[1], defs)}
    return {"type": {int: "integer", float: "number", str: "string", bool: "boolean"}[tp]}


def validate(value: Any, node: dict, root: dict, where: str = "$") -> None:
    """Check ``value`` against ``node``, a part of a schema written by :func:`schema` (the keywords it uses only:
    type, properties, required, additionalProperties, items, anyOf, $ref). Raises :class:`RecordError`."""
    if "$ref" in node:
        return validate(value, root["$defs"][node["$ref"].rsplit("/", 1)[1]], root, where)
    if "anyOf" in node:
        errors = []
        for option in node["anyOf"]:
            try:
                return validate(value, option, root, where)
            except RecordError as err:
                errors.append(str(err))
        deeper = [e for e in errors if not e.startswith(f"{where}: expected")]  # the option of the value's type
        raise RecordError(deeper[0] if deeper else f"{where}: {value!r} matches none of its types"[:300])
    kind = node.get("type")
    checks = {
        "null": lambda v: v is None,
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "string": lambda v: isinstance(v, str),
        "boolean": lambda v: isinstance(v, bool),
        "array": lambda v: isinstance(v, list),
        "object": lambda v: isinstance(v, dict),
    }
    if kind and not checks[kind](value):
        raise RecordError(f"{where}: expected {kind}, got {value!r}"[:300])
    if kind == "array":
        for i, v in enumerate(value):
            validate(v, node.get("items", {}), root, f"{where}[{i}]")
    if kind == "object":
        props = node.get("properties", {})
        missing = [k for k in node.get("required", []) if k not in value]
        if missing:
            raise RecordError(f"{where}: missing key {missing[0]!r}")
        extra = node.get("additionalProperties", {})
        for k, v in value.items():
            if k in props:
                validate(v, props[k], root, f"{where}.{k}")
            elif extra is False:
                raise RecordError(f"{where}: unknown key {k!r}")
            else:
                validate(v, extra, root, f"{where}.{k}")
