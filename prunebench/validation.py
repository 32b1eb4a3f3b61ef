"""Validation with pydantic: the strict base of every config section, and parameter dataclasses.

Config sections derive from ``ConfigModel``: frozen, unknown keys refused, and strict types (an
int is accepted for a float, nothing else is converted: no string for a number, no bool for an
int). YAML has no tuples, so sequence fields are declared as ``Items[T]`` (or ``Pair[T]``), tuples
that also accept a list. Method parameters stay plain dataclasses (the plug-in contract);
``build_dataclass`` validates a mapping against one with the same rules. ``validated`` turns a
``ValidationError`` into a one-line ``ConfigError`` (see ``prunebench.validation_errors``).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, create_model
from pydantic_core import to_jsonable_python

from prunebench.errors import ConfigError
from prunebench.validation_errors import Loc, dotted, error_line

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
#: a tuple that also accepts a list (its items stay strict)
Items = Annotated[tuple[T, ...], Strict(False)]
#: a pair that also accepts a two-item list
Pair = Annotated[tuple[T, T], Strict(False)]


class ConfigModel(BaseModel):
    """Base of the config sections: frozen, strict, finite numbers, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


def validated(model: type[M], raw: Any, where: str = "", name: Callable[[Loc], str] = dotted) -> M:
    """``model`` built from ``raw``; a ``ConfigError`` ``"<where>: <one line>"`` if anything is wrong.

    ``name`` renders the location of the bad value (default: a dotted key such as ``train.lr``).
    """
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        line = error_line(error, model, name)
        raise ConfigError(f"{where}: {line}" if where else line) from None


def build_dataclass(cls: type[T], raw: Mapping[str, Any], where: str = "", prefix: str = "") -> T:
    """An instance of the dataclass ``cls`` from ``raw``, validated as a ``ConfigModel`` would be.

    Errors name the field as ``<prefix><field>`` (e.g. ``method.params.kappa``) after ``where``.
    """
    model = dataclass_model(cls)
    values = validated(model, raw, where, name=lambda loc: prefix + dotted(loc) if loc else prefix.rstrip(".") or "parameters")
    return cls(**{field: getattr(values, field) for field in model.model_fields})


@functools.cache
def dataclass_model(cls: type) -> type[ConfigModel]:
    """A ``ConfigModel`` with the init fields, types and defaults of the dataclass ``cls``."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        if field.default is not dataclasses.MISSING:
            default: Any = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = Field(default_factory=field.default_factory)
        else:
            default = ...
        fields[field.name] = (_lists_as_tuples(hints[field.name]), default)
    return create_model(cls.__name__, __base__=ConfigModel, __module__=cls.__module__, **fields)


def _lists_as_tuples(hint: Any) -> Any:
    """``hint`` with every tuple in it (also inside unions) made to accept a list, as ``Items`` does."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        items = tuple(a if a is Ellipsis else _lists_as_tuples(a) for a in args)
        return Annotated[tuple[items], Strict(False)]  # type: ignore[valid-type]
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_lists_as_tuples(a) for a in args)]
    if origin is Annotated:
        return Annotated[(_lists_as_tuples(args[0]), *hint.__metadata__)]  # type: ignore[valid-type]
    return hint


def to_dict(obj: Any) -> Any:
    """Plain (YAML/JSON-ready) view of a config model or a parameter dataclass; tuples become lists."""
    return to_jsonable_python(obj)
