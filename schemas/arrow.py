"""Arrow schemas derived from the pydantic contracts, so Parquet columns and
models cannot drift apart."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union

import pyarrow as pa
from pydantic import BaseModel

_SCALARS: dict[type, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
}


def _arrow_type(annotation: Any) -> tuple[pa.DataType, bool]:
    """(Arrow type, nullable) for one field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"cannot map union {annotation!r} to one Arrow type")
        return _arrow_type(args[0])[0], True
    if origin is typing.Annotated:
        return _arrow_type(typing.get_args(annotation)[0])
    if origin is Literal:
        values = typing.get_args(annotation)
        return _arrow_type(type(values[0]))[0], False
    if origin in (list, tuple):
        (item,) = typing.get_args(annotation)[:1]
        return pa.list_(_arrow_type(item)[0]), False
    if origin is dict:
        key, value = typing.get_args(annotation)
        return pa.map_(_arrow_type(key)[0], _arrow_type(value)[0]), False
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return pa.struct(arrow_fields(annotation)), False
    if annotation in _SCALARS:
        return _SCALARS[annotation], False
    raise TypeError(f"no Arrow type for annotation {annotation!r}")


def arrow_fields(model: type[BaseModel]) -> list[pa.Field]:
    fields = []
    for name, info in model.model_fields.items():
        arrow_type, nullable = _arrow_type(info.annotation)
        fields.append(pa.field(name, arrow_type, nullable=nullable or not info.is_required()))
    return fields


def arrow_schema(model: type[BaseModel]) -> pa.Schema:
    """The Arrow schema of a pydantic model: one column per field."""
    return pa.schema(arrow_fields(model))
