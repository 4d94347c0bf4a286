"""Presets and the flat parameter table: how a config is built from names and ``KEY=VALUE``s.

A preset (``nst-batch presets`` lists them) fixes the objective, the optimizer, the init and the
pooling. Any flat parameter (:func:`parameter_names`: a field of the nested configs, named
without its path: ``steps`` reaches ``StylizeConfig.optim.steps``) given on the command line, in a
manifest row, in a watch job's ``NAME.json`` or to :func:`build_config` overrides the preset's
value. :func:`configs_from_params` turns CSV strings and JSON values into typed configs.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nst_batch.config import OutputConfig, StylizeConfig
from nst_batch.engine.losses import PAPER_STYLE_LAYERS, LossConfig
from nst_batch.engine.model import ModelConfig
from nst_batch.engine.optimize import OptimConfig
from nst_batch.engine.vgg import Pooling, layer_spec
from nst_batch.errors import ConfigError


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
            "weight 30, L2 TV, content init, L-BFGS",
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
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def _field_types() -> dict[str, Any]:
    """Flat parameter name -> its annotated type, across the nested stylize configs."""
    types_: dict[str, Any] = {}
    for cls in (StylizeConfig, ModelConfig, LossConfig, OptimConfig, OutputConfig):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if not dataclasses.is_dataclass(hints[f.name]):
                types_[f.name] = hints[f.name]
    return types_


def parameter_names() -> list[str]:
    """Every flat parameter a manifest row, a ``NAME.json`` or ``build_config`` accepts."""
    return sorted(_field_types())


def _coerce(name: str, value: Any, kind: Any) -> Any:
    """Turn a CSV string or JSON value into the field's type; ConfigError naming the field."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None
        inner = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            return None
        return _coerce(name, value, inner[0])
    if name in ("content_layers", "style_layers"):
        if isinstance(value, str):
            return parse_layers(value)
        try:  # JSON: ["relu4_2", ["relu1_1", 0.2], ...]
            return tuple(
                (item, 1.0) if isinstance(item, str) else (str(item[0]), float(item[1]))
                for item in value
            )
        except (TypeError, ValueError, IndexError):
            raise ConfigError(
                f"{name}: expected 'relu1_1:0.2,...' or a list, not {value!r}"
            ) from None
    if typing.get_origin(kind) is tuple:  # tuple[float, ...]
        if isinstance(value, str):
            return parse_floats(value)
        if isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            return tuple(float(v) for v in value)
        raise ConfigError(f"{name}: expected numbers like 0.7,0.3, not {value!r}")
    if typing.get_origin(kind) is typing.Literal:
        if value not in args:
            raise ConfigError(f"{name}: expected one of {', '.join(args)}, not {value!r}")
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{name}: expected true or false, not {value!r}")
    if kind in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected a number, not {value!r}")
        try:
            number = float(value) if isinstance(value, str) else value
            if not isinstance(number, (int, float)):
                raise TypeError
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a number, not {value!r}") from None
        if kind is int:
            if number != int(number):
                raise ConfigError(f"{name}: expected a whole number, not {value!r}")
            return int(number)
        return float(number)
    if kind is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{name}: expected text, not {value!r}")
        return str(value)
    raise ConfigError(f"{name}: unsupported value {value!r}")  # pragma: no cover


def configs_from_params(
    params: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
) -> tuple[StylizeConfig, OutputConfig]:
    """Configs from flat parameters (a row's values over ``defaults``); bad names or values raise
    ConfigError. Empty CSV cells and ``None`` mean "not set"."""
    merged = {**(defaults or {}), **{k: v for k, v in params.items() if v not in (None, "")}}
    preset = str(merged.pop("preset", "default"))
    kinds = _field_types()
    unknown = set(merged) - set(kinds)
    if unknown:
        raise ConfigError(unknown_names(unknown, [*parameter_names(), "preset"]))
    values = {k: _coerce(k, v, kinds[k]) for k, v in merged.items()}
    outputs = OutputConfig(**{k: v for k, v in values.items() if k in OUTPUT_KEYS})
    config = build_config(preset, **{k: v for k, v in values.items() if k not in OUTPUT_KEYS})
    return config, outputs
