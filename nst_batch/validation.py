"""Settings checked against their declared types and ranges, with messages that name the field.

The config dataclasses declare simple ranges as ``Annotated`` metadata that pydantic reads
(``steps: Annotated[int, Field(ge=1)]``) and call :func:`check_fields` in ``__post_init__``; the
flat parameter table (:mod:`nst_batch.params`) validates CSV strings and JSON values against the
same annotations. Either way a bad value is a :class:`~nst_batch.errors.ConfigError` that names
the field: "steps must be at least 1, not 0", "pooling: expected one of max, avg, not 'min'".
Checks across fields (all weights 0, blend weights summing to 0) stay code in ``__post_init__``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, TypeAdapter, ValidationError, create_model
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from nst_batch.errors import ConfigError

_NUMBER_ERRORS = ("int_parsing", "int_type", "float_parsing", "float_type", "finite_number")
_BOUNDS = ("ge", "gt", "le", "lt")


@dataclass(frozen=True)
class Note:
    """Words after a field's range in its message (``Note("pixels")``: "size must be between 16
    and 8192 pixels, not 4"); pydantic ignores it."""

    text: str


def _walk(annotation: Any) -> Iterator[Any]:
    """Every type and metadata object inside an annotation (through Annotated, unions, tuples)."""
    yield annotation
    if typing.get_origin(annotation) is Annotated:
        yield from _walk(typing.get_args(annotation)[0])
        yield from typing.get_args(annotation)[1:]
    elif typing.get_origin(annotation) is not Literal:
        for arg in typing.get_args(annotation):
            yield from _walk(arg)


def bounds(annotation: Any) -> dict[str, Any]:
    """The range a field declares (``{"ge": 16, "le": 8192}``), read from its ``Field`` metadata."""
    found: dict[str, Any] = {}
    for item in _walk(annotation):
        for constraint in item.metadata if isinstance(item, FieldInfo) else ():
            for key in _BOUNDS:
                if getattr(constraint, key, None) is not None:
                    found[key] = getattr(constraint, key)
    return found


def _choices(annotation: Any) -> tuple[Any, ...]:
    return tuple(
        arg
        for item in _walk(annotation)
        if typing.get_origin(item) is Literal
        for arg in typing.get_args(item)
    )


def range_phrase(annotation: Any) -> str:
    """The words for a field's range: "must be between 16 and 8192", "must be in [0, 1)", ..."""
    b = {k: f"{v:g}" if isinstance(v, float) else str(v) for k, v in bounds(annotation).items()}
    low, high = b.get("ge", b.get("gt")), b.get("le", b.get("lt"))
    if low is not None and high is not None:
        if "ge" in b and "le" in b:
            return f"must be between {low} and {high}"
        return f"must be in {'[' if 'ge' in b else '('}{low}, {high}{']' if 'le' in b else ')'}"
    if "ge" in b:
        return "must not be negative" if b["ge"] == "0" else f"must be at least {b['ge']}"
    if "gt" in b:
        return "must be positive" if b["gt"] == "0" else f"must be greater than {b['gt']}"
    return f"must be at most {high}" if "le" in b else f"must be less than {high}"


def describe(name: str, error: ErrorDetails, annotation: Any) -> str:
    """One pydantic error about the field ``name``, declared as ``annotation``, as a message."""
    kind, value, ctx = error["type"], error["input"], error.get("ctx") or {}
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        notes = [item.text for item in _walk(annotation) if isinstance(item, Note)]
        return f"{name} {' '.join([range_phrase(annotation), *notes])}, not {str(value).strip()}"
    if kind == "literal_error":
        choices = ", ".join(map(str, _choices(annotation))) or ctx.get("expected", "")
        return f"{name}: expected one of {choices}, not {value!r}"
    if kind in _NUMBER_ERRORS:
        return f"{name}: expected a number, not {value!r}"
    if kind == "int_from_float":
        return f"{name}: expected a whole number, not {value!r}"
    if kind in ("bool_parsing", "bool_type"):
        return f"{name}: expected true or false, not {value!r}"
    if kind == "string_type":
        return f"{name}: expected text, not {value!r}"
    if kind == "value_error" and "error" in ctx:  # raised by a validator: its own words
        return f"{name}: {ctx['error']}"
    return f"{name}: {error['msg'].lower()}, not {value!r}"


def config_error(err: ValidationError, annotations: Mapping[str, Any]) -> ConfigError:
    """A ConfigError with one message per bad field (each field once, in declaration order)."""
    messages: dict[str, str] = {}
    for error in err.errors():
        name = str(error["loc"][0])  # a model's errors are located at a field first
        messages.setdefault(name, describe(name, error, annotations.get(name)))
    return ConfigError("; ".join(messages.values()))


def field_annotations(cls: type) -> dict[str, Any]:
    """A dataclass's field annotations with their metadata, nested dataclasses left out."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(cls)
        if not dataclasses.is_dataclass(unwrap(hints[f.name]))
    }


def unwrap(annotation: Any) -> Any:
    """The type inside ``Annotated[...]`` (``Annotated[int, Field(ge=1)]`` -> ``int``)."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def optional_of(annotation: Any) -> Any | None:
    """``X`` (unwrapped) for ``X | None``, else None."""
    annotation = unwrap(annotation)
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType) or len(args) != 2:
        return None
    return unwrap(args[0] if args[1] is type(None) else args[1]) if type(None) in args else None


@functools.cache
def _model(cls: type) -> tuple[type[BaseModel], dict[str, Any]]:
    annotations = field_annotations(cls)
    model = create_model(  # type: ignore[call-overload]
        f"{cls.__name__}Check",
        **{name: (annotation, ...) for name, annotation in annotations.items()},
    )
    return model, annotations


def check_fields(config: Any) -> None:
    """Check a config dataclass's values against its annotations (types in pydantic's lax mode,
    ``Field`` ranges, ``Literal`` choices); ConfigError naming the field. The values are kept as
    given: this checks, it does not convert."""
    model, annotations = _model(type(config))
    try:
        model.model_validate({name: getattr(config, name) for name in annotations})
    except ValidationError as err:
        raise config_error(err, annotations) from None


@functools.cache
def _adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


def check_value(name: str, value: Any, annotation: Any) -> None:
    """:func:`check_fields` for one value outside a dataclass."""
    try:
        _adapter(annotation).validate_python(value)
    except ValidationError as err:
        raise ConfigError(describe(name, err.errors()[0], annotation)) from None


# CSV cells and JSON values -> what a field takes (before pydantic checks types and ranges).

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}
Parser = Callable[[Any], Any]


def _boolean(value: Any) -> Any:
    if isinstance(value, str):
        if value.strip().lower() not in _TRUE | _FALSE:
            raise ValueError(f"expected true or false, not {value!r}")
        return value.strip().lower() in _TRUE
    return value


def _number(kind: type) -> Parser:
    def parse(value: Any) -> Any:
        if isinstance(value, bool):  # JSON true is not 1
            raise ValueError(f"expected a number, not {value!r}")
        if isinstance(value, str) and kind is int:  # "1e3" and "20.0" are whole numbers too
            try:
                return int(value.strip())
            except ValueError:
                with contextlib.suppress(ValueError):
                    return float(value.strip())
        return value

    return parse


def _text(value: Any) -> Any:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return str(value) if numeric else value


def lax_parser(annotation: Any, formats: Mapping[Any, Parser]) -> Parser:
    """The function (a pydantic ``BeforeValidator``) that turns a CSV string or JSON value into
    what the annotation takes: ``yes``/``no``/``on``/``off``/``true``/``false``/``1``/``0`` for
    booleans, no JSON ``true`` for a number, a number for text; the text ``none`` or an empty
    string means None where None is allowed; ``formats`` parses the types named in it
    (``{tuple[float, ...]: parse_floats}``). Whatever it passes on, pydantic checks."""
    kind = optional_of(annotation) or unwrap(annotation)
    if kind in formats:
        parse = formats[kind]
    elif kind is bool:
        parse = _boolean
    elif kind in (int, float):
        parse = _number(kind)
    else:
        parse = _text if kind is str else (lambda value: value)  # Literal: pydantic checks
    if optional_of(annotation) is None:
        return parse

    def none_or_parse(value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            return None
        return parse(value)

    return none_or_parse


def field_comments(cls: type) -> dict[str, str]:
    """A dataclass field's comment in its source, for a description: the one after it on its
    line, else the lines of comment just above it; {} where the source is not at hand."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    found: dict[str, str] = {}
    above: list[str] = []
    for line in lines:
        text = line.strip()
        if text.startswith("#"):
            above.append(text.lstrip("#").strip())
            continue
        name = re.match(r"(\w+)\s*:", text)
        if name and name.group(1) in names:
            found[name.group(1)] = line.partition("  # ")[2].strip() or " ".join(above)
        above = []
    return found


def shared(schema: Any, part: Any, ref: dict[str, str]) -> Any:
    """A JSON Schema with every copy of ``part`` replaced by ``ref`` (a ``$ref`` to ``$defs``)."""
    if schema == part:
        return ref
    if isinstance(schema, dict):
        return {k: shared(v, part, ref) for k, v in schema.items()}
    if isinstance(schema, list):
        return [shared(v, part, ref) for v in schema]
    return schema
