"""Typed JSON records: frozen dataclasses read from and written to JSON by their type hints.

A record class is a frozen dataclass whose fields are typed with ``str``, ``int``, ``float``,
``bool``, ``None`` (in a union), another record class, ``tuple[T, ...]`` (a JSON list),
``Mapping[str, Any]`` (an object copied as it is) or ``Any``; a field typed ``T | Absent``
(default `ABSENT`) may be missing from the JSON and is then left out again when written.

`decode` checks every value against its field's type on the way in: Python's ``float()`` takes
the text ``"0.5"`` as readily as the number, so a record whose number is written as text is
refused here, with the path of the field (``tests.mean.p_value is the text '0.5' where a number
or null belongs``), not computed on. Fields a class does not name are refused too: what a
record holds is what its class says, and `encode` of a decoded record gives back the same JSON
value (the same canonical bytes, so an old signature still covers it). Numbers are kept as they
were read (an integer stays an integer).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any, TypeVar, Union

T = TypeVar("T")


class Absent:
    """The type of `ABSENT`: a field the JSON does not hold."""

    _instance: Absent | None = None

    def __new__(cls) -> Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSENT"

    def __bool__(self) -> bool:
        return False


ABSENT = Absent()


def present(value: T | Absent) -> T | None:
    """``value``, or None for a field the record does not hold."""
    return None if isinstance(value, Absent) else value


class RecordTypeError(ValueError):
    """A JSON value that is not of the record's shape; the message names the field."""


_WORDS = {
    float: "a number",
    int: "an integer",
    str: "text",
    bool: "true or false",
    type(None): "null",
}


def _is_record(kind: Any) -> bool:
    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


@cache
def _fields(cls: type) -> tuple[tuple[str, Any, bool], ...]:
    """(name, type without Absent, may be absent) of each field of a record class."""
    hints = typing.get_type_hints(cls)
    fields = []
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        members = _members(kind)
        optional = Absent in members
        if optional:
            rest = tuple(m for m in members if m is not Absent)
            kind = rest[0] if len(rest) == 1 else Union[rest]  # noqa: UP007 (built at run time)
        fields.append((field.name, kind, optional))
    return tuple(fields)


def _members(kind: Any) -> tuple[Any, ...]:
    if typing.get_origin(kind) in (Union, types.UnionType):
        return typing.get_args(kind)
    return (kind,)


def _words(kind: Any) -> str:
    words = []
    for member in _members(kind):
        origin = typing.get_origin(member)
        if _is_record(member) or member is dict or origin in (dict, Mapping):
            words.append("an object")
        elif origin is tuple:
            words.append("a list")
        else:
            words.append(_WORDS.get(member, "a value"))
    return " or ".join(words)


def _described(value: Any) -> str:
    if isinstance(value, str):
        shown = value if len(value) <= 24 else value[:21] + "..."
        return f"the text {shown!r}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return f"the number {value!r}"


def decode(cls: type[T], value: Any, where: str = "") -> T:
    """The record of class ``cls`` that the JSON value ``value`` holds; `RecordTypeError`
    naming the first field that is missing, unknown, or not of its type."""
    return typing.cast(T, _decode(cls, value, where))


def _decode(kind: Any, value: Any, where: str) -> Any:
    label = where or "the record"
    members = _members(kind)
    if value is None and type(None) in members:
        return None
    concrete = [m for m in members if m is not type(None)]
    if len(concrete) != 1:
        raise TypeError(f"{kind!r}: a field may be one type, or one type or null")
    (member,) = concrete
    origin = typing.get_origin(member)
    if member is Any:
        return value
    if _is_record(member):
        if not isinstance(value, dict):
            raise RecordTypeError(f"{label} is {_described(value)} where an object belongs")
        return _decode_record(member, value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise RecordTypeError(f"{label} is {_described(value)} where a list belongs")
        (item,) = (a for a in typing.get_args(member) if a is not Ellipsis)
        return tuple(_decode(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or member is dict:
        if not isinstance(value, dict):
            raise RecordTypeError(f"{label} is {_described(value)} where an object belongs")
        return value
    if _is_scalar(member, value):
        return value
    raise RecordTypeError(f"{label} is {_described(value)} where {_words(kind)} belongs")


def _is_scalar(kind: Any, value: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, int | float)
    return kind in (int, str) and isinstance(value, kind)


def _decode_record(cls: type, value: dict[str, Any], where: str) -> Any:
    known = _fields(cls)
    names = {name for name, _, _ in known}
    unknown = sorted(set(value) - names)
    if unknown:
        inner = f"{where}.{unknown[0]}" if where else unknown[0]
        raise RecordTypeError(f"{inner} is not a field this record has")
    arguments = {}
    for name, kind, optional in known:
        inner = f"{where}.{name}" if where else name
        if name not in value:
            if optional:
                continue
            raise RecordTypeError(f"{inner} is missing")
        arguments[name] = _decode(kind, value[name], inner)
    return cls(**arguments)


def encode(record: Any) -> Any:
    """The JSON value of a record (of anything `decode` returns): fields that are `ABSENT` are
    left out; tuples become lists; objects are copied."""
    if _is_record(type(record)):
        return {
            field.name: encode(getattr(record, field.name))
            for field in dataclasses.fields(record)
            if not isinstance(getattr(record, field.name), Absent)
        }
    if isinstance(record, tuple | list):
        return [encode(item) for item in record]
    if isinstance(record, Mapping):
        return {key: encode(item) for key, item in record.items()}
    return record
