"""One line for a pydantic ``ValidationError`` (the key, what is allowed there, the bad value) or a
YAML syntax error (``file:line:column: problem``).

``train.lr must be a number > 0, got 'abc'``; ``unknown key 'train.lrr'; allowed: steps, ...``.
What is allowed is read from the model's type hints and constraints (a custom validator's
``ValueError`` text says it itself), so the wording follows the models without a table per field.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

#: where a value sits: keys and list indices from the top of the validated mapping
Loc = tuple[str | int, ...]

_NOUNS: dict[Any, tuple[str, str]] = {
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    bool: ("true or false", "true/false values"),
    str: ("a string", "strings"),
    Any: ("any value", "any values"),
}
_MAX_VALUE_CHARS = 60
#: what PyYAML reads as a string although it looks like a number (YAML 1.1 floats need a '.')
_EXPONENT_TEXT = re.compile(r"[-+]?[0-9]+[eE][-+]?[0-9]+")


def dotted(loc: Loc) -> str:
    """``("train", "milestones", 1)`` → ``train.milestones[1]``; the empty location is the top level."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "the top level"


def error_line(error: ValidationError, model: type[BaseModel], name: Callable[[Loc], str] = dotted) -> str:
    """The first problem of ``error`` (raised validating ``model``) as one line; ``name`` renders keys."""
    first = error.errors(include_url=False)[0]
    loc, kind, value = tuple(first["loc"]), first["type"], first["input"]
    if kind == "extra_forbidden":
        parent = _container(hint_at(model, loc[:-1]))
        fields = parent.model_fields if isinstance(parent, type) and issubclass(parent, BaseModel) else {}
        return f"unknown key '{name(loc)}'; allowed: {', '.join(fields) or 'none'}"
    if kind == "missing" and loc and isinstance(loc[-1], int):
        loc, kind = loc[:-1], "too_short"  # a fixed-length list with too few items: the list is the bad value
    if kind == "value_error":
        allowed = str(first.get("ctx", {}).get("error", first["msg"]))
    else:
        allowed = describe(hint_at(model, loc))
    if kind == "missing":
        return f"{name(loc)} is missing; allowed: {allowed}"
    hint = ""
    if isinstance(value, str) and _EXPONENT_TEXT.fullmatch(value):
        mantissa, exponent = value.lower().split("e")
        hint = f" (YAML reads {value} as text; write {mantissa}.0e{exponent})"
    return f"{name(loc)} must be {allowed}, got {_short(value)}{hint}"


def yaml_error_line(where: str, error: yaml.YAMLError) -> str:
    """``file:line:column: problem (context at line:column)`` of a YAML syntax error, 1-based as editors count."""
    mark = getattr(error, "problem_mark", None)
    if not isinstance(error, yaml.MarkedYAMLError) or mark is None:
        return f"{where}: not valid YAML ({' '.join(str(error).split())})"
    problem = " ".join((error.problem or "syntax error").split())
    context = ""
    if error.context:
        start = error.context_mark
        at = f" at {start.line + 1}:{start.column + 1}" if start is not None and start.line != mark.line else ""
        context = f" ({' '.join(error.context.split())}{at})"
    return f"{where}:{mark.line + 1}:{mark.column + 1}: {problem}{context}"


def hint_at(model: type[BaseModel], loc: Loc) -> Any:
    """The type hint (with its constraints as ``Annotated`` metadata) of the value at ``loc``; Any if unknown."""
    hint: Any = model
    for part in loc:
        hint = _container(hint)
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if isinstance(hint, type) and issubclass(hint, BaseModel) and part in hint.model_fields:
            field = hint.model_fields[str(part)]
            hint = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
        elif origin is tuple and isinstance(part, int) and args:
            hint = args[0] if Ellipsis in args else args[min(part, len(args) - 1)]
        elif origin in (dict, Mapping) and len(args) == 2:
            hint = args[1]
        else:
            return Any
    return hint


def describe(hint: Any, plural: bool = False) -> str:
    """Words for what ``hint`` allows: ``a number in (0, 1]``, ``a list of integers``, ``one of 'a', 'b'``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        inner, bounds = args[0], _bounds(hint.__metadata__)
        if _is_optional(inner):
            return f"{describe(Annotated[(_without_none(inner), *hint.__metadata__)], plural)} or null"
        return f"{describe(inner, plural)} {bounds}".rstrip()
    if origin in (typing.Union, types.UnionType):
        words = " or ".join(describe(a, plural) for a in args if a is not type(None))
        return f"{words} or null" if type(None) in args else words
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        if Ellipsis in args or not args:
            return f"{'lists' if plural else 'a list'} of {describe(args[0] if args else Any, plural=True)}"
        return f"{'lists' if plural else 'a list'} of {len(args)} {describe(args[0], plural=True)}"
    if origin in (dict, Mapping) or hint in (dict, Mapping) or (isinstance(hint, type) and issubclass(hint, BaseModel)):
        return "mappings" if plural else "a mapping"
    singular, many = _NOUNS.get(hint, (getattr(hint, "__name__", str(hint)),) * 2)
    return many if plural else singular


def _bounds(metadata: tuple[Any, ...]) -> str:
    """``in (0, 1]``, ``>= 1``, ... from the ``gt``/``ge``/``lt``/``le`` constraints (also inside a FieldInfo)."""
    flat = [m for item in metadata for m in (item.metadata if isinstance(item, FieldInfo) else [item])]

    def limit(sides: tuple[tuple[str, str, str], ...]) -> tuple[str, str, str] | None:
        for name, bracket, operator in sides:
            value = next((getattr(m, name) for m in flat if getattr(m, name, None) is not None), None)
            if value is not None:
                return f"{value:g}", bracket, operator
        return None

    low, high = limit((("gt", "(", ">"), ("ge", "[", ">="))), limit((("lt", ")", "<"), ("le", "]", "<=")))
    if low and high:
        return f"in {low[1]}{low[0]}, {high[0]}{high[1]}"
    bound = low or high
    return f"{bound[2]} {bound[0]}" if bound else ""


def _container(hint: Any) -> Any:
    """``hint`` without ``Annotated`` and ``| None`` wrappers (what a key or index is looked up in)."""
    while True:
        if typing.get_origin(hint) is Annotated:
            hint = typing.get_args(hint)[0]
        elif _is_optional(hint):
            hint = _without_none(hint)
        else:
            return hint


def _is_optional(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def _without_none(hint: Any) -> Any:
    rest = tuple(a for a in typing.get_args(hint) if a is not type(None))
    return rest[0] if len(rest) == 1 else typing.Union[rest]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 3] + "..."
