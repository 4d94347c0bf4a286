"""The flat parameter table: pydantic validation with messages naming the field, ranges declared
on the config dataclasses, and the JSON Schema of a manifest row / NAME.json."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from nst_batch.cli import app
from nst_batch.config import OutputConfig, StylizeConfig
from nst_batch.engine.losses import LossConfig
from nst_batch.engine.model import ModelConfig
from nst_batch.engine.optimize import OptimConfig
from nst_batch.errors import ConfigError
from nst_batch.manifest.rows import ROW_KEYS
from nst_batch.params import PRESETS, build_config, configs_from_params, parameter_names, row_schema

GOOD_ROW: dict[str, Any] = {
    "content": "photos/cat.png",
    "style": ["styles/wave.jpg", "styles/starry.jpg"],
    "output": "out/cat-blend.jpg",
    "name": "cat",
    "preset": "gatys",
    "steps": 500,
    "style_blend": [0.7, 0.3],
    "preserve_colors": True,
    "style_layers": "relu1_1:0.2,relu2_1",
    "content_layers": ["relu4_2", ["relu5_2", 0.5]],
    "lr": None,
    "scales": 2,
}
BAD_ROWS: list[dict[str, Any]] = [
    {**GOOD_ROW, "stepz": 3},  # unknown key
    {**GOOD_ROW, "steps": 0},  # out of range
    {**GOOD_ROW, "size": 9000},
    {**GOOD_ROW, "ema": 1.0},  # [0, 1)
    {**GOOD_ROW, "preset": "monet"},
    {**GOOD_ROW, "pooling": "min"},
    {**GOOD_ROW, "style_layers": [["relu9_9", 1.0]]},
    {**GOOD_ROW, "style_layers": "relu1_1:x"},
    {**GOOD_ROW, "style": 3},
    {**GOOD_ROW, "content": None},
]


def test_row_schema_shape() -> None:
    schema = row_schema()
    json.dumps(schema)  # plain JSON
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    properties = schema["properties"]
    assert set(properties) == {*ROW_KEYS, *parameter_names()}
    assert not schema.get("required")  # a NAME.json has parameters only
    assert properties["preset"]["enum"] == list(PRESETS)
    assert properties["size"] | {"description": ""} == {
        "type": "integer",
        "minimum": 16,
        "maximum": 8192,
        "default": 512,
        "description": "",
    }
    assert properties["style_weight"]["default"] == 45.0 and properties["steps"]["minimum"] == 1
    assert properties["ema"]["exclusiveMaximum"] == 1 and properties["lr"]["default"] is None
    assert properties["pooling"]["enum"] == ["max", "avg"]
    assert properties["size"]["description"] == "long edge of the output, in pixels"
    assert all(p.get("description") for p in properties.values())


def test_row_schema_defaults_are_the_default_preset() -> None:
    properties = row_schema()["properties"]
    defaults = {k: p["default"] for k, p in properties.items() if k not in ROW_KEYS}
    assert configs_from_params(defaults) == (build_config(), OutputConfig())


def test_row_schema_validates_rows() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(row_schema())
    jsonschema.Draft202012Validator.check_schema(row_schema())
    assert not list(validator.iter_errors(GOOD_ROW))
    assert not list(validator.iter_errors({"steps": 40, "sheet": True}))  # a NAME.json
    for row in BAD_ROWS:
        assert list(validator.iter_errors(row)), row
    params = {k: v for k, v in GOOD_ROW.items() if k not in ROW_KEYS}
    config, _ = configs_from_params(params)  # what the schema accepts, the table takes
    assert config.optim.steps == 500 and config.loss.content_layers[1] == ("relu5_2", 0.5)


def test_bad_values_name_every_bad_field() -> None:
    with pytest.raises(ConfigError) as info:
        configs_from_params({"steps": "0", "size": "4", "pooling": "min"})
    message = str(info.value)
    assert "size must be between 16 and 8192 pixels, not 4" in message
    assert "steps must be at least 1, not 0" in message
    assert "pooling: expected one of max, avg, not 'min'" in message
    with pytest.raises(ConfigError, match="style_layers: unknown VGG19 layer 'relu9_9'"):
        configs_from_params({"style_layers": [["relu9_9", 1]]})
    with pytest.raises(ConfigError, match="steps: expected a number, not True"):
        configs_from_params({"steps": True})
    assert configs_from_params({"steps": "1e3", "scales": "none"})[0].optim.steps == 1000


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: OptimConfig(steps=0), "steps must be at least 1, not 0"),
        (lambda: OptimConfig(lr=0.0), "lr must be positive, not 0"),
        (lambda: OptimConfig(ema=1.0), r"ema must be in \[0, 1\), not 1"),
        (lambda: OptimConfig(optimizer="sgd"), "optimizer: expected one of lbfgs, adam"),
        (lambda: StylizeConfig(size=4), "size must be between 16 and 8192 pixels, not 4"),
        (lambda: StylizeConfig(scales=7), "scales must be between 1 and 6, not 7"),
        (lambda: OutputConfig(save_every=-1), r"save_every must not be negative \(0 = off\)"),
        (lambda: LossConfig(tv_exponent=0.0), "tv_exponent must be positive, not 0"),
        (lambda: LossConfig(content_weight=-1.0), "content_weight must not be negative"),
        (lambda: ModelConfig(pooling="min"), "pooling: expected one of max, avg"),
    ],
)
def test_direct_construction_checks_the_declared_ranges(make: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()


def test_configs_stay_plain_frozen_dataclasses() -> None:
    config = build_config(steps=10, style_weight=5)
    assert dataclasses.replace(config.optim, steps=20).steps == 20
    assert dataclasses.asdict(config)["optim"]["steps"] == 10
    assert {config: 1}[build_config(steps=10, style_weight=5)] == 1  # hashable, equal by value
    assert config.loss.style_weight == 5 and type(config.loss.style_weight) is int  # not converted
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.optim.steps = 3  # type: ignore[misc]
    with pytest.raises(ConfigError, match="steps must be at least 1"):
        dataclasses.replace(config.optim, steps=0)


def test_schema_command_prints_and_writes_the_schema(tmp_path: Path) -> None:
    printed = CliRunner().invoke(app, ["schema"])
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.stdout) == row_schema()
    target = tmp_path / "row.schema.json"
    written = CliRunner().invoke(app, ["schema", "-o", str(target)])
    assert written.exit_code == 0, written.output
    assert json.loads(target.read_text()) == row_schema()
    blocked = CliRunner().invoke(app, ["schema", "-o", str(target / "x.json")])  # a file in the way
    assert blocked.exit_code == 1 and "error:" in blocked.output
