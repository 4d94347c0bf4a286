"""The quality metric with the real bundled VGG19, on tiny generated pictures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from typer.testing import CliRunner

from nst_batch.cli import app
from nst_batch.demo import swirl_painting
from nst_batch.errors import ConfigError, ImageError
from nst_batch.images import save_image, to_tensor
from nst_batch.metrics import (
    MetricsConfig,
    content_distance,
    score,
    style_distance,
)
from nst_batch.params import build_config
from nst_batch.pool import ModelPool
from nst_batch.transfer import stylize_tensors
from tests.conftest import content_picture

CPU = MetricsConfig(device="cpu")


@pytest.fixture(scope="module")
def models() -> ModelPool:
    return ModelPool()


@pytest.fixture(scope="module")
def content() -> Tensor:
    return to_tensor(content_picture(64, 48))  # (1, 3, 48, 64)


@pytest.fixture(scope="module")
def style() -> Tensor:
    return to_tensor(swirl_painting(64, seed=2, strokes=300))  # (1, 3, 64, 64)


def test_identical_images_are_at_distance_zero(
    content: Tensor, style: Tensor, models: ModelPool
) -> None:
    scores = score(content, content, style, CPU, models)
    assert scores.content == 0.0
    assert scores.size == (64, 48)
    assert set(scores.per_layer) == {"relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"}
    assert scores.style == pytest.approx(sum(scores.per_layer.values()) / 5)
    assert 0.1 < scores.style < 5  # a photo is far from a swirl painting's Grams
    assert style_distance(style, style, CPU, models) == 0.0
    assert content_distance(content, content, CPU, models) == 0.0


def test_stylized_output_is_closer_to_the_style_than_the_content_is(
    content: Tensor, style: Tensor, models: ModelPool
) -> None:
    config = build_config(size=64, steps=10, style_weight=100, scales=1, device="cpu")
    model, _ = models.get(config.model, config.loss.layers, torch.device("cpu"))
    stylized = stylize_tensors(content, style, config, model).image
    before = score(content, content, style, CPU, models)
    after = score(stylized, content, style, CPU, models)
    assert after.style < 0.9 * before.style
    assert after.content > 0  # the price paid: some content moved


def test_noise_is_further_from_the_content_than_a_slight_blur(
    content: Tensor, models: ModelPool
) -> None:
    kernel = torch.full((3, 1, 3, 3), 1 / 9)
    blurred = F.conv2d(F.pad(content, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    noise = torch.rand(content.shape, generator=torch.Generator().manual_seed(0))
    near = content_distance(blurred, content, CPU, models)
    far = content_distance(noise, content, CPU, models)
    assert 0 < near < far


def test_blend_weights_pick_the_style(content: Tensor, style: Tensor, models: ModelPool) -> None:
    other = to_tensor(swirl_painting(48, seed=5, strokes=200))
    only_first = MetricsConfig(device="cpu", style_blend=(1.0, 0.0))
    blended = style_distance(content, [style, other], only_first, models)
    assert blended == pytest.approx(style_distance(content, style, CPU, models), rel=1e-6)
    assert style_distance(content, [style, other], CPU, models) != pytest.approx(blended)


def test_sizes_and_input_kinds(
    content: Tensor, style: Tensor, models: ModelPool, tmp_path: Path
) -> None:
    path = tmp_path / "content.png"
    save_image(content, path)
    from_file = score(path, path, style, CPU, models)
    from_tensor = score(content, content, style, CPU, models)
    assert from_file.style == pytest.approx(from_tensor.style, rel=1e-6)  # PNG is lossless
    # Evaluated at another long edge: the content is resized to the output's exact size.
    small = score(path, content, style, MetricsConfig(device="cpu", size=32), models)
    assert small.size == (32, 24) and small.content < 0.05
    # A style image at another size is resized to the output's long edge, as the engine does.
    big_style = to_tensor(swirl_painting(128, seed=2, strokes=300))
    assert math.isfinite(style_distance(content, big_style, CPU, models))


def test_bad_input_is_a_clear_error(content: Tensor, style: Tensor, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no such file"):
        score(tmp_path / "missing.png", content, style, CPU)
    with pytest.raises(ImageError, match=r"\(1, 3, H, W\)"):
        score(torch.zeros(1, 4, 8, 8), content, style, CPU)
    with pytest.raises(ConfigError, match="unknown VGG19 layer"):
        MetricsConfig(style_layers=("relu9_1",))
    with pytest.raises(ConfigError, match="style_blend has 2 weights for 1"):
        score(content, content, style, MetricsConfig(device="cpu", style_blend=(1, 1)))
    with pytest.raises(ConfigError, match="at least one style"):
        score(content, content, [], CPU)


runner = CliRunner()


def test_score_command(content: Tensor, style: Tensor, tmp_path: Path) -> None:
    content_path, style_path = tmp_path / "content.png", tmp_path / "style.png"
    save_image(content, content_path)
    save_image(style, style_path)
    args = [str(content_path), str(content_path), str(style_path), "--device", "cpu"]

    result = runner.invoke(app, ["score", *args])
    assert result.exit_code == 0, result.output
    assert "style relu3_1" in result.output and "content (relu4_2)" in result.output

    result = runner.invoke(app, ["score", *args, "--json", "--size", "48"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    assert scores["content"] == 0.0 and scores["size"] == [48, 36]
    assert scores["style"] > 0 and len(scores["per_layer"]) == 5

    missing = tmp_path / "missing.png"
    result = runner.invoke(app, ["score", str(missing), str(content_path), str(style_path)])
    assert result.exit_code == 1
    assert "missing.png: no such file" in result.output
