"""A stylization job as a value, its parameter hash, and the model pool jobs share.

Both batch front ends (``nst-batch run`` over a manifest and ``nst-batch watch`` over an inbox)
describe work as :class:`Job` values built from flat parameters (strings from a CSV cell, values
from JSON), and decide whether a job is already done by the parameter hash its sidecar records.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from nst_batch.engine.losses import LossConfig
from nst_batch.engine.optimize import OptimConfig, Progress
from nst_batch.errors import ConfigError
from nst_batch.images import oriented_size, resized_shape
from nst_batch.presets import parse_floats, parse_layers, unknown_names
from nst_batch.stylize import (
    ModelConfig,
    ModelPool,
    OutputConfig,
    StylizeConfig,
    StylizeResult,
    batch_key,
    build_config,
    parameter_hash,
    read_inputs,
    sidecar_path,
    stylize,
    stylize_batch,
)

OUTPUT_KEYS = frozenset(f.name for f in dataclasses.fields(OutputConfig))
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Job:
    content: Path
    styles: tuple[Path, ...]
    output: Path
    config: StylizeConfig = field(default_factory=StylizeConfig)
    outputs: OutputConfig = field(default_factory=OutputConfig)
    name: str = ""  # how reports and logs refer to it (manifest line, inbox entry)


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


def job_settings(
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


def recorded_hash(output: Path) -> str | None:
    """The parameter hash of a finished output, or None if the output or its sidecar is missing."""
    sidecar = sidecar_path(output)
    if not output.is_file() or not sidecar.is_file():
        return None
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("interrupted"):
        return None  # an interrupted run's best-so-far image is not a finished job
    value = meta.get("parameter_hash")
    return value if isinstance(value, str) else None


def is_done(job: Job) -> bool:
    """The job's output and sidecar exist and were made from the same inputs and settings."""
    found = recorded_hash(job.output)
    return found is not None and found == parameter_hash(job.content, job.styles, job.config)


def run_job(
    job: Job,
    models: ModelPool,
    progress: Callable[[Progress], None] | None = None,
    cancel_check: Callable[[], None] | None = None,
) -> StylizeResult:
    """Run one job with a shared model pool; writes the output and then its sidecar, each
    atomically, so a finished job is one whose sidecar exists. Ctrl-C writes nothing and
    propagates KeyboardInterrupt: the job stays to be redone; so does an exception raised by
    ``cancel_check`` (called before every optimizer step)."""
    return stylize(
        job.content,
        list(job.styles),
        job.output,
        job.config,
        progress,
        job.outputs,
        models,
        keep_interrupted=False,
        cancel_check=cancel_check,
    )


def run_batch(
    jobs: Sequence[Job],
    models: ModelPool,
    progress: Callable[[Progress], None] | None = None,
    cancel_check: Callable[[], None] | None = None,
) -> list[StylizeResult]:
    """Run jobs that can share a batch (:func:`batch_groups`) as one; each job's output and
    sidecar are written as :func:`run_job` writes them, and its result is the one it gets alone.
    ``progress`` sees the whole batch (``Progress.jobs`` has each job's losses)."""
    inputs = [
        read_inputs(job.content, list(job.styles), job.output, job.config, job.outputs)
        for job in jobs
    ]
    return stylize_batch(inputs, progress, models, False, cancel_check)


def batch_groups(jobs: Sequence[Job], batch_size: int) -> list[list[Job]]:
    """Split jobs into batches of at most ``batch_size`` that can run as one: same
    :func:`~nst_batch.stylize.batch_key` and content of the same shape at the output size.
    Batches come in the order of their first job (batch size 1 keeps the order). Jobs whose input
    cannot be read go alone (their error then surfaces when they run)."""
    groups: dict[tuple[Any, ...], list[list[Job]]] = {}
    for index, job in enumerate(jobs):
        try:
            shape = resized_shape(oriented_size(job.content), job.config.size)
            key: tuple[Any, ...] = (batch_key(job.config), shape)
        except (OSError, ValueError, Image.DecompressionBombError):
            key = ("alone", index)
        batches = groups.setdefault(key, [[]])
        if len(batches[-1]) >= batch_size:
            batches.append([])
        batches[-1].append(job)
    position = {id(job): i for i, job in enumerate(jobs)}
    batches = [batch for found in groups.values() for batch in found]
    return sorted(batches, key=lambda batch: position[id(batch[0])])
