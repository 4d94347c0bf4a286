"""Jobs as values: flat parameters from CSV/JSON, the parameter hash, done-detection, the pool."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nst_batch.engine.model import ModelConfig
from nst_batch.errors import ConfigError
from nst_batch.jobs.inputs import Job, is_done
from nst_batch.jobs.run import run_job
from nst_batch.jobs.sidecar import parameter_hash
from nst_batch.params import build_config, configs_from_params, parameter_names
from nst_batch.pool import ModelPool


def test_csv_strings_become_typed_settings() -> None:
    config, outputs = configs_from_params(
        {
            "steps": "20",
            "style_layers": "relu1_1:0.5,relu2_1",
            "style_blend": "0.7,0.3",
            "preserve_colors": "yes",
            "sheet": "true",
            "lr": "",  # an empty cell is "not set"
            "preset": "adam",
        }
    )
    assert config.preset == "adam" and config.optim.optimizer == "adam"
    assert config.optim.steps == 20 and config.optim.lr == 0.02  # the preset's, untouched
    assert config.loss.style_layers == (("relu1_1", 0.5), ("relu2_1", 1.0))
    assert config.style_blend == (0.7, 0.3) and config.preserve_colors and outputs.sheet


def test_json_values_and_defaults_merge() -> None:
    config, _ = configs_from_params(
        {"style_layers": [["relu1_1", 0.5], "relu3_1"], "scales": None, "size": 128},
        defaults={"steps": 7, "size": 256},
    )
    assert config.size == 128 and config.optim.steps == 7 and config.scales is None
    assert config.loss.style_layers == (("relu1_1", 0.5), ("relu3_1", 1.0))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"steps": "many"}, "steps: expected a number"),
        ({"steps": 2.5}, "whole number"),
        ({"stepz": 3}, "unknown parameter(s) stepz"),
        ({"pooling": "min"}, "expected one of max, avg"),
        ({"sheet": "maybe"}, "expected true or false"),
        ({"style_weight": -1}, "style_weight must not be negative"),
        ({"style_layers": "relu9_9"}, "relu9_9"),
        ({"size": 4}, "size must be between"),
        ({"preset": "monet"}, "unknown preset"),
        ({"save_every": -2}, "save_every"),
    ],
)
def test_bad_parameters_name_the_field(params: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        configs_from_params(params)


def test_every_parameter_name_is_accepted() -> None:
    assert {"steps", "style_weight", "size", "sheet", "preset", "weights"} <= set(parameter_names())


def test_hash_follows_inputs_and_settings_but_not_the_device(pair: tuple[Path, Path]) -> None:
    content, style = pair
    config = build_config(size=64, steps=2)
    base = parameter_hash(content, [style], config)
    assert base == parameter_hash(content, [style], build_config(size=64, steps=2, device="cpu"))
    assert base != parameter_hash(content, [style], build_config(size=64, steps=3))
    assert base != parameter_hash(style, [content], config)
    content.write_bytes(content.read_bytes() + b"\0")  # same name, other bytes
    assert base != parameter_hash(content, [style], config)


def test_a_finished_job_is_done_and_a_changed_one_is_not(
    pair: tuple[Path, Path], tmp_path: Path
) -> None:
    content, style = pair
    job = Job(content, (style,), tmp_path / "out.png", build_config(size=48, steps=2))
    pool = ModelPool()
    assert not is_done(job)
    result = run_job(job, pool)
    assert job.output.is_file() and is_done(job)
    assert json.loads(job.output.with_suffix(".json").read_text())["parameter_hash"] == (
        parameter_hash(content, [style], job.config)
    )
    assert not result.interrupted
    assert not is_done(Job(content, (style,), job.output, build_config(size=48, steps=3)))
    job.output.with_suffix(".json").unlink()
    assert not is_done(job)  # an image without its sidecar is not a finished job


def test_pool_loads_a_model_once() -> None:
    pool = ModelPool()
    layers = ("relu1_1", "relu2_1")
    first = pool.get(ModelConfig(), layers, torch.device("cpu"))
    assert pool.get(ModelConfig(), layers, torch.device("cpu")) is first
    assert pool.get(ModelConfig(pooling="avg"), layers, torch.device("cpu")) is not first
