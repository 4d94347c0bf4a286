"""Presets and the flat parameter table: how a config is built from names and ``KEY=VALUE``s.

A preset (``nst-batch presets`` lists them) fixes the objective, the optimizer, the init and the
pooling. Any flat parameter (:func:`parameter_names`: a field of the nested configs, named
without its path: ``steps`` reaches ``StylizeConfig.optim.steps``) given on the command line, in a
manifest row, in a watch job's ``NAME.json`` or to :func:`build_config` overrides the preset's
value. :func:`configs_from_params` turns CSV strings and JSON values into typed configs: pydantic
validates them against the config fields' annotations (ranges declared there as ``Field(ge=1)``,
:mod:`nst_batch.validation`), after parsing the text forms (``relu1_1:0.2,relu2_1``, ``0.7,0.3``,
``yes``/``no``, ``none``). :func:`row_schema` is the JSON Schema of a manifest row / ``NAME.json``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model
from pydantic.json_schema import WithJsonSchema

from nst_batch.config import OutputConfig, StylizeConfig
from nst_batch.engine.losses import PAPER_STYLE_LAYERS, LossConfig
from nst_batch.engine.memory import MemoryConfig
from nst_batch.engine.model import ModelConfig
from nst_batch.engine.optimize import OptimConfig
from nst_batch.engine.vgg import LAYER_NAMES, Pooling, layer_spec
from nst_batch.errors import ConfigError
from nst_batch.validation import (
    config_error,
    field_annotations,
    field_comments,
    lax_parser,
    optional_of,
    shared,
    unwrap,
)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    loss: LossConfig
    optim: OptimConfig
    init: str = "content"
    pooling: Pooling = "max"


_STYLE_RELU_X_1 = tuple(name for name, _ in PAPER_STYLE_LAYERS)  # relu1_1 ... relu5_1
PRESETS: Mapping[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "default",
            "nst-batch's own: relative errors, content relu4_2, style relu1_1..relu5_1 weighted "
            "256:64:16:4:1 (brushwork and palette without the painting's objects), style "
            "weight 45, L2 TV, content init, L-BFGS",
            LossConfig(),
            OptimConfig(),
        ),
        Preset(
            "equal-layers",
            "the default of nst-batch 0.1: style relu1_1..relu5_1 at 0.2 each, style weight 10; "
            "bolder large-scale shapes, but copies objects (faces, hands) of paintings that "
            "have them",
            LossConfig(style_layers=PAPER_STYLE_LAYERS, style_weight=10.0),
            OptimConfig(),
        ),
        Preset(
            "gatys",
            "Gatys et al. 2016: the paper's losses (eq. 1, 4), content conv4_2 (after ReLU), "
            "style conv1_1..conv5_1 at 1/5 each, alpha/beta = 1e-3, average pooling, "
            "white-noise init, L-BFGS, no TV",
            LossConfig(
                normalization="paper",
                style_layers=PAPER_STYLE_LAYERS,
                content_weight=1.0,
                style_weight=1e3,
                tv_weight=0.0,
            ),
            OptimConfig(steps=500),
            init="noise",
            pooling="avg",
        ),
        Preset(
            "keras-example",
            "the Keras neural style example: content block5_conv2 (relu5_2), style "
            "block1_conv1..block5_conv1 equally weighted, TV (dx^2 + dy^2)^1.25, noise init, "
            "L-BFGS (weights on nst-batch's relative scale)",
            LossConfig(
                content_layers=(("relu5_2", 1.0),),
                style_layers=PAPER_STYLE_LAYERS,
                content_weight=1.0,
                style_weight=10.0,
                tv_weight=1.0,
                tv_exponent=1.25,
            ),
            OptimConfig(steps=400),
            init="noise",
        ),
        Preset(
            "adam",
            "the Adam recipe: content conv5_2, style relu1_1..relu5_1 weighted "
            "0.75/0.5/0.2/0.2/0.2, L1 TV, content init, Adam",
            LossConfig(
                content_layers=(("conv5_2", 1.0),),
                style_layers=tuple(zip(_STYLE_RELU_X_1, (0.75, 0.5, 0.2, 0.2, 0.2), strict=True)),
                content_weight=1.0,
                style_weight=10.0,
                tv_weight=0.1,
                tv_kind="l1",
            ),
            OptimConfig(optimizer="adam", steps=600, lr=0.02),
        ),
        Preset(
            "pastiche",
            "pastiche 1.6's default objective exactly: MSE losses, content relu4_2 at 0.01, "
            "style relu1_1..relu5_1 each 10/C^2 on the MSE of Gram/(H W), no TV, content init, "
            "L-BFGS (lr 1, history 100), 1000 steps",
            LossConfig(
                normalization="mse",
                content_layers=(("relu4_2", 0.01),),
                style_layers=tuple(
                    (n, 10.0 / layer_spec(n).out_channels ** 2) for n in _STYLE_RELU_X_1
                ),
                content_weight=1.0,
                style_weight=1.0,
                tv_weight=0.0,
            ),
            OptimConfig(steps=1000),
        ),
    )
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}") from None


def build_config(preset: str = "default", **overrides: Any) -> StylizeConfig:
    """A preset's config with flat overrides (``steps=100, style_weight=30, pooling="avg"``).

    ``None`` values are ignored, so callers can pass every option they parsed.
    """
    p = get_preset(preset)
    base = StylizeConfig(
        preset=p.name, init=p.init, model=ModelConfig(pooling=p.pooling), loss=p.loss, optim=p.optim
    )
    return override(base, {k: v for k, v in overrides.items() if v is not None})


def parse_layers(text: str, default_weight: float = 1.0) -> tuple[tuple[str, float], ...]:
    """``"relu1_1:0.2,relu2_1"`` -> ``(("relu1_1", 0.2), ("relu2_1", default_weight))``."""
    layers: list[tuple[str, float]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, _, weight = item.partition(":")
        try:
            layer_spec(name.strip())
            value = float(weight) if weight else default_weight
        except ValueError as err:
            raise ConfigError(f"layer list {text!r}: {err}") from None
        if value < 0:
            raise ConfigError(f"layer list {text!r}: weight of {name} is negative")
        layers.append((name.strip(), value))
    if not layers:
        raise ConfigError(f"layer list {text!r} names no layer")
    return tuple(layers)


def parse_floats(text: str) -> tuple[float, ...]:
    """``"0.7,0.3"`` -> ``(0.7, 0.3)``."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"expected comma-separated numbers, not {text!r}") from None


def override(config: Any, overrides: Mapping[str, Any]) -> Any:
    """Replace fields of a (nested) frozen config by flat name: ``{"steps": 10}`` reaches
    ``config.optim.steps``. Field names are unique across the nested configs; an unknown name is
    a ConfigError listing the valid ones."""
    remaining = dict(overrides)
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            inner = {k: v for k, v in remaining.items() if k in _names(value)}
            if inner:
                changes[f.name] = override(value, inner)
                for k in inner:
                    remaining.pop(k)
        elif f.name in remaining:
            changes[f.name] = remaining.pop(f.name)
    if remaining:
        raise ConfigError(unknown_names(remaining, _names(config)))
    try:
        return dataclasses.replace(config, **changes)
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None


def _names(config: Any) -> set[str]:
    names: set[str] = set()
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        names |= _names(value) if dataclasses.is_dataclass(value) else {f.name}
    return names


def unknown_names(unknown: Iterable[str], known: Iterable[str], what: str = "parameter") -> str:
    """The message for names that are not parameters: each with the closest known name, when one
    is close ("did you mean steps?"), then the known names."""
    known = sorted(known)
    parts = []
    for name in sorted(unknown):
        close = difflib.get_close_matches(name, known, n=1)
        parts.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return f"unknown {what}(s) {', '.join(parts)}; known: {', '.join(known)}"


# --- the flat parameter table ---


OUTPUT_KEYS = frozenset(f.name for f in dataclasses.fields(OutputConfig))
_CONFIGS = (StylizeConfig, ModelConfig, LossConfig, OptimConfig, MemoryConfig, OutputConfig)
_LayerList = tuple[tuple[str, float], ...]
_LAYER = r"\s*(?:conv|relu|pool)\d(?:_\d)?"
_NUMBER = r"\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*"
_LAYER_SCHEMA = {"type": "string", "enum": list(LAYER_NAMES)}  # "$defs/layer" in the row schema


@functools.cache
def _table() -> dict[str, tuple[Any, str]]:
    """Flat parameter name -> (its config field's annotation with range metadata, description)."""
    table: dict[str, tuple[Any, str]] = {}
    for cls in _CONFIGS:
        comments = field_comments(cls)
        for name, annotation in field_annotations(cls).items():
            table[name] = (annotation, comments.get(name) or name.replace("_", " "))
    return table


def parameter_names() -> list[str]:
    """Every flat parameter a manifest row, a ``NAME.json`` or ``build_config`` accepts."""
    return sorted(_table())


# CSV cells and JSON values -> what the config fields take; pydantic then checks types and ranges.


def _layer_list(value: Any) -> Any:
    """``"relu1_1:0.2,relu2_1"`` or JSON ``["relu4_2", ["relu1_1", 0.2]]`` -> (layer, weight)s."""
    if isinstance(value, str):
        try:
            return parse_layers(value)
        except ConfigError as err:
            raise ValueError(str(err)) from None
    if isinstance(value, (list, tuple)) and all(
        isinstance(item, str)
        or (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str))
        for item in value
    ):
        layers = tuple((item, 1.0) if isinstance(item, str) else tuple(item) for item in value)
        for name, _ in layers:
            layer_spec(name)  # ValueError: an unknown layer
        return layers
    raise ValueError(f"expected 'relu1_1:0.2,...' or a list, not {value!r}")


def _numbers(value: Any) -> Any:
    """``"0.7,0.3"`` or JSON ``[0.7, 0.3]`` -> ``(0.7, 0.3)``."""
    if isinstance(value, str):
        try:
            return parse_floats(value)
        except ConfigError as err:
            raise ValueError(str(err)) from None
    if isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        return tuple(value)
    raise ValueError(f"expected numbers like 0.7,0.3, not {value!r}")


def _json_schema(annotation: Any) -> Any | None:
    """The JSON Schema of a parameter whose text form pydantic cannot derive from its type."""
    kind = optional_of(annotation) or unwrap(annotation)
    if kind == _LayerList:
        weight = {"type": "number", "minimum": 0}
        pair = {"type": "array", "prefixItems": [_LAYER_SCHEMA, weight], "minItems": 2}
        pair |= {"maxItems": 2}
        return {
            "anyOf": [
                {
                    "type": "string",
                    "pattern": rf"^{_LAYER}(:{_NUMBER})?(,{_LAYER}(:{_NUMBER})?)*\s*$",
                    "description": "layers with optional weights: relu1_1:0.2,relu2_1",
                },
                {"type": "array", "items": {"anyOf": [_LAYER_SCHEMA, pair]}},
            ]
        }
    if kind == tuple[float, ...]:  # style_blend: optional
        return {
            "anyOf": [
                {"type": "string", "pattern": rf"^{_NUMBER}(,{_NUMBER})*$"},
                {"type": "array", "items": {"type": "number", "minimum": 0}, "minItems": 1},
                {"type": "null"},
            ]
        }
    return None


def _row_field(name: str, default: Any) -> tuple[Any, Any]:
    annotation, description = _table()[name]
    parse = lax_parser(annotation, {_LayerList: _layer_list, tuple[float, ...]: _numbers})
    metadata: list[Any] = [BeforeValidator(parse)]
    schema = _json_schema(annotation)
    if schema is not None:
        metadata.append(WithJsonSchema(schema))
    return Annotated[(annotation, *metadata)], Field(default, description=description)


@functools.cache
def _parameters_model() -> type[BaseModel]:
    """The flat parameters (but ``preset``) as one pydantic model, defaults from the default
    preset: what validates them and what their JSON Schema is made from."""
    config = build_config()
    defaults = {**_flat_values(config), **_flat_values(OutputConfig())}
    fields = {name: _row_field(name, defaults[name]) for name in parameter_names()}
    del fields["preset"]  # configs_from_params looks it up; the row schema lists the names
    return create_model(  # type: ignore[call-overload,no-any-return]
        "Parameters", __config__=ConfigDict(extra="forbid", allow_inf_nan=False), **fields
    )


def _flat_values(config: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        values |= _flat_values(value) if dataclasses.is_dataclass(value) else {f.name: value}
    return values


def parse_parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """Flat parameters as CSV strings or JSON values -> the typed values the configs take. Only
    the given names come back; a bad value is a ConfigError naming the field (all bad fields)."""
    try:
        parsed = _parameters_model().model_validate(dict(params))
    except ValidationError as err:
        raise config_error(err, {name: kind for name, (kind, _) in _table().items()}) from None
    return {name: getattr(parsed, name) for name in params}


def configs_from_params(
    params: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
) -> tuple[StylizeConfig, OutputConfig]:
    """Configs from flat parameters (a row's values over ``defaults``); bad names or values raise
    ConfigError. Empty CSV cells and ``None`` mean "not set"."""
    merged = {**(defaults or {}), **{k: v for k, v in params.items() if v not in (None, "")}}
    preset = str(merged.pop("preset", "default"))
    unknown = set(merged) - set(_table())
    if unknown:
        raise ConfigError(unknown_names(unknown, {*parameter_names(), "preset"}))
    values = parse_parameters(merged)
    outputs = OutputConfig(**{k: v for k, v in values.items() if k in OUTPUT_KEYS})
    config = build_config(preset, **{k: v for k, v in values.items() if k not in OUTPUT_KEYS})
    return config, outputs


ROW_SCHEMA_KEYS: dict[str, tuple[Any, str]] = {  # the non-parameter keys of a manifest row
    "content": (str, "the content image (relative paths: to the manifest's folder)"),
    "style": (
        str | list[str],
        "the style image; several as one string separated by ';' or as a list",
    ),
    "output": (str, "the output image: .png, .jpg or .webp"),
    "name": (str, "a label for the job in logs and the report"),
}


def row_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one manifest row, or of a watch job's ``NAME.json``
    (which takes the parameters only): the row keys, ``preset`` and every flat parameter with
    its type, range, default (the default preset's) and description; no other key."""
    preset = (
        Literal[tuple(PRESETS)],
        Field("default", description="the recipe whose values the other parameters override"),
    )
    row = create_model(  # type: ignore[call-overload]
        "NstBatchRow",
        __base__=_parameters_model(),
        preset=preset,
        **{k: (kind, Field(None, description=text)) for k, (kind, text) in ROW_SCHEMA_KEYS.items()},
    )
    generated = row.model_json_schema()
    first = [*ROW_SCHEMA_KEYS, "preset"]
    properties = {k: generated["properties"][k] for k in first} | generated["properties"]
    for key, value in properties.items():
        value.pop("title", None)  # "Tv Kind": the description says more
        if key in ROW_SCHEMA_KEYS:  # optional (NAME.json has none of them) but never null
            value.pop("default")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "nst-batch manifest row / NAME.json",
        "description": (
            "One row of an `nst-batch run` manifest (a JSON Lines object; a CSV row has the same "
            "columns, as text) or a watch job's NAME.json (parameters only). A parameter left "
            "out takes the preset's value; the defaults shown are the default preset's."
        ),
        "type": "object",
        "properties": shared(properties, _LAYER_SCHEMA, {"$ref": "#/$defs/layer"}),
        "additionalProperties": False,
        "$defs": {"layer": copy.deepcopy(_LAYER_SCHEMA)},
    }
