"""Artistic controls: each one shown to have its effect (real weights, tiny images, CPU)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from nst_batch.cli import app
from nst_batch.color import rgb_to_yiq
from nst_batch.demo import swirl_painting
from nst_batch.engine.losses import LossConfig, compute_targets, gram, objective, style_loss
from nst_batch.engine.optimize import OptimConfig, Progress, optimize
from nst_batch.engine.weights import Weights
from nst_batch.errors import ConfigError
from nst_batch.images import load_image, to_tensor
from nst_batch.params import PRESETS, build_config, parse_layers
from nst_batch.transfer import MIN_LEVEL_STEPS, resize_to, stylize_tensors
from tests.conftest import content_picture, make_model

LOSS = LossConfig()
runner = CliRunner()


def stripes(
    size: int, period: int, colours: tuple[tuple[int, ...], tuple[int, ...]]
) -> Image.Image:
    """Diagonal two-colour stripes: a style whose scale is easy to see in Gram statistics."""
    y, x = np.mgrid[0:size, 0:size]
    mask = ((x + y) // (period // 2)) % 2 == 0
    arr = np.where(mask[..., None], np.array(colours[0]), np.array(colours[1]))
    return Image.fromarray(arr.astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def model(weights: Weights) -> torch.nn.Module:
    return make_model(weights, tuple(dict.fromkeys((*LOSS.layers, "relu1_1", "relu1_2"))))


@pytest.fixture(scope="module")
def content() -> torch.Tensor:
    return to_tensor(content_picture(64, 64))


def style_distance(
    model, image: torch.Tensor, style: torch.Tensor, weighted: bool = False
) -> float:
    """Mean relative Gram error over relu1_1..relu5_1 (style taken at its own size); with
    ``weighted``, weighted as the default objective weighs them (what a default run optimizes)."""
    with torch.no_grad():
        fx, fs = model(image), model(style)
    layers = [(n, w if weighted else 1.0) for n, w in LOSS.style_layers]
    total = sum(w * style_loss(gram(fx[n]), gram(fs[n])).item() for n, w in layers)
    return total / sum(w for _, w in layers)


def run(model, content, styles, **overrides) -> torch.Tensor:
    config = build_config(**{"size": 64, "steps": 25, "scales": 1, **overrides})
    return stylize_tensors(content, styles, config, model).image


def test_style_blend_weights_pull_towards_each_style(model, content) -> None:
    a = to_tensor(swirl_painting(64, seed=1, strokes=300))
    b = to_tensor(stripes(64, 8, ((230, 40, 30), (250, 230, 60))))
    mostly_a = run(model, content, [a, b], style_blend=(0.9, 0.1))
    mostly_b = run(model, content, [a, b], style_blend=(0.1, 0.9))
    for x, y, style in ((mostly_a, mostly_b, a), (mostly_b, mostly_a, b)):
        assert style_distance(model, x, style, True) < style_distance(model, y, style, True)


def test_style_scale_sets_the_size_of_the_style_features(model, content) -> None:
    style = to_tensor(stripes(64, 16, ((20, 20, 20), (240, 240, 240))))
    half, full = resize_to(style, 32), style
    at_half = run(model, content, [style], style_scale=0.5)
    at_full = run(model, content, [style], style_scale=1.0)
    # Each result matches the style statistics of the size it was given, better than the other.
    assert style_distance(model, at_half, half) < style_distance(model, at_full, half)
    assert style_distance(model, at_full, full) < style_distance(model, at_half, full)


def test_preserve_colors_keeps_content_chroma_and_stylized_luminance(model, content) -> None:
    style = to_tensor(stripes(64, 8, ((230, 40, 30), (40, 200, 60))))
    plain = run(model, content, [style])
    kept = run(model, content, [style], preserve_colors=True)
    yiq_plain, yiq_kept, yiq_content = rgb_to_yiq(plain), rgb_to_yiq(kept), rgb_to_yiq(content)
    assert (yiq_kept[:, 0] - yiq_plain[:, 0]).abs().mean() < 0.01  # luminance: the stylized one
    assert (yiq_kept[:, 1:] - yiq_content[:, 1:]).abs().mean() < 0.01  # chroma: the content's
    assert (yiq_plain[:, 1:] - yiq_content[:, 1:]).abs().mean() > 0.03  # (which plain changed)


def test_lower_content_layer_reconstructs_pixels_better(model, content) -> None:
    """Content-only reconstruction from noise (paper Fig. 1): relu1_2 keeps pixels, relu4_2 not."""
    dummy = content  # style weight 0: the style image is never used
    errors = {}
    for layer in ("relu1_2", "relu4_2"):
        image = run(
            model,
            content,
            [dummy],
            style_weight=0.0,
            init="noise",
            tv_weight=0.0,
            content_layers=((layer, 1.0),),
            steps=40,
        )
        errors[layer] = (image - content).abs().mean().item()
    assert errors["relu1_2"] < 0.5 * errors["relu4_2"], errors


def test_style_only_reconstruction_from_noise(model, content) -> None:
    style = to_tensor(swirl_painting(64, seed=2, strokes=300))
    # The paper's equal layer weights: the distance below weighs the layers alike too.
    config = build_config(
        "equal-layers", size=64, steps=30, scales=1, content_weight=0.0, init="noise"
    )
    result = stylize_tensors(content, [style], config, model)
    assert all(p.content == 0.0 for p in result.history)
    noise = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert style_distance(model, result.image, style) < 0.3 * style_distance(model, noise, style)


def test_pyramid_sizes() -> None:
    assert build_config(size=512).pyramid() == (128, 256, 512)
    assert build_config(size=1024).pyramid() == (128, 256, 512, 1024)
    assert build_config(size=384).pyramid() == (192, 384)
    assert build_config(size=383).pyramid() == (383,)
    assert build_config(size=512, scales=1).pyramid() == (512,)
    assert build_config(size=512, scales=2).pyramid() == (256, 512)


def test_multiscale_runs_coarse_to_fine_and_helps(model, content) -> None:
    style = to_tensor(swirl_painting(64, seed=1, strokes=300))
    seen: list[Progress] = []
    multi = build_config(size=64, steps=10, scales=2, scale_steps=20)
    result = stylize_tensors(content, [style], multi, model, seen.append)
    assert [p.step for p in seen] == list(range(1, 31)) and seen[0].total == 30
    assert [p.image.shape[-1] for p in (seen[0], seen[19], seen[20])] == [32, 32, 64]
    assert [p.scale for p in (seen[19], seen[20])] == [0, 1]
    assert result.image.shape == content.shape and result.steps == 30
    single = stylize_tensors(content, [style], build_config(size=64, steps=10, scales=1), model)
    assert result.loss < single.loss  # same fine-scale steps, better start


def test_ema_returns_the_average_of_the_iterates(model, content) -> None:
    style = to_tensor(swirl_painting(64, seed=1, strokes=300))
    cfg = LossConfig()
    with torch.no_grad():
        targets = compute_targets(model(content), model(style), cfg)

    def loss_fn(x: torch.Tensor):
        return objective(x, model(x), targets, cfg)

    iterates: list[torch.Tensor] = []
    config = OptimConfig(optimizer="adam", steps=6, ema=0.5)
    result = optimize(content, loss_fn, config, lambda p: iterates.append(p.image.clone()))
    expected = content.clone()
    for x in iterates:
        expected = 0.5 * expected + 0.5 * x
    assert torch.allclose(result.image, expected, atol=1e-6)
    assert result.loss == pytest.approx(loss_fn(expected).total.item(), rel=1e-5)


def test_time_budget_and_early_stop(model, content) -> None:
    style = to_tensor(swirl_painting(64, seed=1, strokes=300))
    timed = stylize_tensors(content, [style], build_config(size=64, max_seconds=1e-6), model)
    assert timed.stop_reason == "time" and timed.steps == 1
    # Coarse to fine: each level gets its share of the budget and the finest the rest.
    budget = build_config(size=64, scales=2, steps=100_000, max_seconds=1.5)
    pyramid = stylize_tensors(content, [style], budget, model)
    assert pyramid.stop_reason == "time" and {p.scale for p in pyramid.history} == {0, 1}
    assert pyramid.elapsed >= 1.5 and pyramid.image.shape[-2:] == content.shape[-2:]
    # A tiny budget still gives each coarser level MIN_LEVEL_STEPS (capped at its steps).
    tiny = build_config(size=64, scales=3, steps=50, scale_steps=30, max_seconds=1e-6)
    levels = stylize_tensors(content, [style], tiny, model)
    counts = [sum(p.scale == i for p in levels.history) for i in range(3)]
    assert counts == [MIN_LEVEL_STEPS, MIN_LEVEL_STEPS, 1], counts
    few = build_config(size=64, scales=2, steps=5, scale_steps=5, max_seconds=1e-6)
    assert stylize_tensors(content, [style], few, model).steps == 5 + 1
    early = build_config(size=64, steps=200, tolerance=0.5, window=3)
    converged = stylize_tensors(content, [style], early, model)
    assert converged.stop_reason == "converged" and converged.steps < 200


def test_presets_are_frozen_and_listed() -> None:
    assert set(PRESETS) == {
        "default",
        "equal-layers",
        "gatys",
        "keras-example",
        "adam",
        "pastiche",
    }
    gatys = build_config("gatys")
    assert gatys.loss.normalization == "paper" and gatys.model.pooling == "avg"
    assert gatys.init == "noise" and gatys.loss.style_weight / gatys.loss.content_weight == 1e3
    keras = build_config("keras-example")
    assert keras.loss.content_layers == (("relu5_2", 1.0),) and keras.loss.tv_exponent == 1.25
    adam = build_config("adam")
    assert adam.optim.optimizer == "adam" and adam.loss.tv_kind == "l1"
    assert [w for _, w in adam.loss.style_layers] == [0.75, 0.5, 0.2, 0.2, 0.2]
    # The paper's recipes keep equal layer weights whatever nst-batch's default is.
    for name in ("gatys", "keras-example", "equal-layers"):
        assert [w for _, w in build_config(name).loss.style_layers] == [0.2] * 5
    assert build_config("adam", steps=5).optim.steps == 5  # a flag overrides the preset
    with pytest.raises(AttributeError):
        PRESETS["gatys"].loss.style_weight = 1.0  # type: ignore[misc]
    result = runner.invoke(app, ["presets"])
    assert result.exit_code == 0
    for name in PRESETS:
        assert name in result.output


def test_default_style_layers_favour_texture_over_objects() -> None:
    """The default weighs relu1_1..relu5_1 256:64:16:4:1 (summing to 1) with style weight 45:
    deep layers, which copy a painting's objects, get little weight (issue 14)."""
    loss = build_config().loss
    names = [n for n, _ in loss.style_layers]
    weights = [w for _, w in loss.style_layers]
    assert names == ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
    assert sum(weights) == pytest.approx(1.0)
    assert [a / b for a, b in itertools.pairwise(weights)] == pytest.approx([4.0] * 4)
    assert loss.style_weight == 45.0


def test_pastiche_preset_is_pastiches_objective(weights: Weights, tmp_path: Path) -> None:
    """Same image, same inputs: our 'pastiche' objective equals pastiche's own _calc_loss."""
    from pastiche.pastiche import PasticheArtist

    content_path, style_path = tmp_path / "c.png", tmp_path / "s.png"
    content_picture(48, 32).save(content_path)
    swirl_painting(48, seed=4, strokes=200).resize((48, 32)).save(style_path)
    artist = PasticheArtist(str(content_path), [str(style_path)], device="cpu", size=48)
    image = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    caffe = image.flip(1) * 255 - torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)
    artist.pastiche.data = caffe
    theirs = artist._calc_loss().item()

    config = build_config("pastiche")
    model = make_model(weights, config.loss.layers)
    with torch.no_grad():
        targets = compute_targets(
            model(load_image(content_path)), model(load_image(style_path)), config.loss
        )
        ours = objective(image, model(image), targets, config.loss).total.item()
    assert ours == pytest.approx(theirs, rel=1e-4)


def test_overrides_and_layer_lists() -> None:
    assert parse_layers("relu1_1:0.2, relu2_1") == (("relu1_1", 0.2), ("relu2_1", 1.0))
    for bad in ("relu9_1", "relu1_1:x", "relu1_1:-1", ""):
        with pytest.raises(ConfigError):
            parse_layers(bad)
    with pytest.raises(ConfigError, match="unknown parameter"):
        build_config(stepz=3)
    with pytest.raises(ConfigError, match="unknown preset"):
        build_config("monet")
    with pytest.raises(ConfigError, match="style_scale"):
        build_config(style_scale=0)


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def test_cli_controls_end_to_end(pair: tuple[Path, Path], tmp_path: Path) -> None:
    content, style = pair
    second = tmp_path / "stripes.png"
    stripes(64, 8, ((230, 40, 30), (250, 230, 60))).save(second)
    out = tmp_path / "out.png"
    result = invoke(
        "stylize", content, "-o", out, "--style", style, "--style", second,
        "--style-blend", "0.7,0.3", "--style-scale", "0.5", "--preserve-colors",
        "--content-layers", "relu3_1", "--style-layers", "relu1_1:0.5,relu2_1:0.5",
        "--size", 48, "--steps", 4, "--scales", 2, "--scale-steps", 2, "--ema", 0.5,
        "--save-every", 2, "--sheet", "--preset", "adam",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    meta = json.loads(out.with_suffix(".json").read_text())
    params = meta["parameters"]
    assert params["style_blend"] == [0.7, 0.3] and params["style_scale"] == 0.5
    assert params["preserve_colors"] is True and params["preset"] == "adam"
    assert params["loss"]["content_layers"] == [["relu3_1", 1.0]]
    assert params["loss"]["style_layers"] == [["relu1_1", 0.5], ["relu2_1", 0.5]]
    assert params["optim"]["optimizer"] == "adam" and params["optim"]["ema"] == 0.5
    assert [s["size"] for s in meta["inputs"]["styles"]] == [[24, 24], [24, 24]]
    assert [level["long_edge"] for level in meta["pyramid"]] == [24, 48]
    assert meta["steps_completed"] == 6
    names = {p.name for p in tmp_path.iterdir()}
    assert {"out.0002.png", "out.0004.png", "out.0006.png"} <= names  # numbered snapshots
    sheet = Image.open(tmp_path / "out.sheet.png")
    assert sheet.width > 3 * 32 and sheet.height > 32  # content | 2 styles | result + caption
    assert Image.open(tmp_path / "out.loss.png").format == "PNG"
    assert meta["files"]["sheet"].endswith("out.sheet.png")


def test_cli_reconstruct_content_needs_no_style(pair: tuple[Path, Path], tmp_path: Path) -> None:
    content, _ = pair
    out = tmp_path / "rec.png"
    result = invoke("stylize", content, "-o", out, "--reconstruct", "content", "--size", 32,
                    "--steps", 3, "--content-layers", "relu2_1")  # fmt: skip
    assert result.exit_code == 0, result.output
    params = json.loads(out.with_suffix(".json").read_text())["parameters"]
    assert params["loss"]["style_weight"] == 0.0 and params["init"] == "noise"
    assert invoke("stylize", content, "-o", out).exit_code == 2  # no style, no reconstruction


def test_cli_bad_control_values(pair: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "o.png"
    for args, fragment in [
        (["--style-blend", "1,x"], "comma-separated numbers"),
        (["--style-blend", "0.5,0.5"], "2 weights for 1 style"),
        (["--style-layers", "relu7_1"], "unknown VGG19 layer"),
        (["--preset", "monet"], "unknown preset"),
        (["--ema", "1.5"], "ema must be in"),
    ]:
        result = invoke("stylize", *pair, "-o", out, "--size", 32, "--steps", 1, *args)
        assert result.exit_code == 1, (args, result.output)
        assert fragment in result.output, (args, result.output)


def test_features_grid(tmp_path: Path) -> None:
    image = tmp_path / "in.png"
    content_picture(40, 30).save(image)
    out = tmp_path / "grid.png"
    result = invoke("features", image, "--layers", "relu1_1,relu3_1", "-o", out, "--size", 40,
                    "--channels", 3)  # fmt: skip
    assert result.exit_code == 0, result.output
    grid = Image.open(out)
    assert grid.size == (72 + 4 * (40 + 4), 2 * (30 + 4) + 4)
    # relu1_1 maps are sharp, relu3_1 maps blocky: the rows differ.
    row1 = np.asarray(grid)[4 : 4 + 30, 72 + 44 :]
    row2 = np.asarray(grid)[38 : 38 + 30, 72 + 44 :]
    assert not np.array_equal(row1, row2)
    assert invoke("features", image, "--layers", "relu9_9", "-o", out).exit_code == 1
