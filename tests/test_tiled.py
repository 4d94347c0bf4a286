"""Tiled evaluation equals the untiled objective and gradient (real weights, float32, CPU)."""

from __future__ import annotations

import pytest
import torch

from nst_batch.demo import swirl_painting
from nst_batch.engine.losses import (
    LossConfig,
    LossTerms,
    compute_targets,
    objective_weights,
    stack_targets,
    weighted_terms,
)
from nst_batch.engine.optimize import OptimConfig, optimize
from nst_batch.engine.tiled import TiledObjective, banded_tv, halo, stride, tile_grid
from nst_batch.engine.tv import tv_terms
from nst_batch.engine.weights import Weights
from nst_batch.images import to_tensor
from tests.conftest import content_picture, make_model

DEEP = LossConfig(
    style_layers=(("relu1_1", 0.5), ("relu3_1", 0.3), ("relu5_1", 0.2)),
    content_layers=(("relu4_2", 1.0),),
    style_weight=30.0,
    tv_weight=5.0,
)
SHALLOW = LossConfig(
    style_layers=(("relu1_1", 0.7), ("relu2_1", 0.3)),
    content_layers=(("relu2_2", 1.0),),
    tv_kind="l1",
    normalization="mse",
)


def test_halo_covers_the_receptive_field() -> None:
    # relu5_1: field 156 px = 16 + 2 * 70, rounded up to the stride 16
    assert halo(["relu5_1"]) == 80 and stride(["relu5_1"]) == 16
    assert halo(["relu1_1"]) == 1 and stride(["relu1_1"]) == 1
    assert halo(["relu2_1", "relu1_1"]) == 4  # 1 + 1 + 2 = 4, stride 2


@pytest.mark.parametrize(
    ("height", "width", "tile"), [(203, 150, 64), (97, 130, 48), (64, 64, 100)]
)
def test_tiles_cover_the_image_once(height: int, width: int, tile: int) -> None:
    tiles = tile_grid(height, width, tile, ["relu5_1"])
    covered = torch.zeros(height, width, dtype=torch.int32)
    for t in tiles:
        covered[t.top : t.bottom, t.left : t.right] += 1
        assert t.top % 16 == 0 and t.left % 16 == 0 and t.crop_top % 16 == 0
        assert t.crop_top == max(0, t.top - 80) and t.crop_bottom == min(height, t.bottom + 80)
    assert bool((covered == 1).all())


def _problem(
    weights: Weights, config: LossConfig, height: int, width: int, batch: int, dtype: torch.dtype
):
    model = make_model(weights, config.layers).to(dtype)
    contents = [
        to_tensor(content_picture(width + 7 * j, height))[..., :width] for j in range(batch)
    ]
    style = to_tensor(swirl_painting(120, seed=3, strokes=300)).to(dtype)
    with torch.no_grad():
        targets = stack_targets(
            [compute_targets(model(c.to(dtype)), model(style), config) for c in contents]
        )
    loss_weights = objective_weights([config] * batch, dtype=dtype)
    torch.manual_seed(0)
    x = torch.cat(contents).to(dtype) + 0.1 * torch.randn(batch, 3, height, width, dtype=dtype)
    return model, targets, loss_weights, x.clamp(0, 1)


# float32 within 1e-4 (sizes and tiles that do not divide evenly, batches, several style layers
# and TV); float64 shows the remaining difference is rounding only.
@pytest.mark.parametrize(("kind", "exponent"), [("l2", 1.0), ("l2", 1.25), ("l1", 1.0)])
@pytest.mark.parametrize("rows", [1, 3, 7, 40])
def test_banded_tv_equals_whole_image_tv(kind: str, exponent: float, rows: int) -> None:
    # Bands that do not divide the height, down to one row, and two images weighted differently.
    x = torch.rand(2, 3, 23, 17, dtype=torch.float64)
    weights = objective_weights(
        [LossConfig(tv_weight=w, tv_kind=kind, tv_exponent=exponent) for w in (2.0, 0.5)],
        dtype=torch.float64,
    )
    assert weights.tv is not None
    image = x.clone().requires_grad_(True)
    expected = weights.tv * tv_terms(image, kind, exponent)  # type: ignore[arg-type]
    (expected_grad,) = torch.autograd.grad(expected.sum(), image)
    gradient = torch.zeros_like(x)
    value = banded_tv(x, weights, rows, gradient)
    torch.testing.assert_close(value, expected.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(gradient, expected_grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    ("config", "height", "width", "tile", "batch", "dtype", "tolerance"),
    [
        (DEEP, 203, 170, 64, 1, torch.float32, 1e-4),
        (DEEP, 150, 117, 48, 2, torch.float32, 1e-4),
        (SHALLOW, 75, 101, 24, 2, torch.float32, 1e-4),
        (SHALLOW, 75, 101, 24, 2, torch.float64, 1e-10),
    ],
)
def test_tiled_loss_and_gradient_equal_untiled(
    weights: Weights,
    config: LossConfig,
    height: int,
    width: int,
    tile: int,
    batch: int,
    dtype: torch.dtype,
    tolerance: float,
) -> None:
    model, targets, loss_weights, x = _problem(weights, config, height, width, batch, dtype)
    assert len(tile_grid(height, width, tile, config.layers)) > 2
    image = x.clone().requires_grad_(True)
    expected = weighted_terms(image, model(image), targets, loss_weights)
    (expected_grad,) = torch.autograd.grad(expected.total.sum(), image)

    terms, grad = TiledObjective(model, targets, loss_weights, tile)(x)

    for name in ("total", "content", "style", "tv"):
        got, want = getattr(terms, name), getattr(expected, name).detach()
        assert torch.allclose(got, want, rtol=tolerance, atol=0), name
    error = (grad - expected_grad).norm() / expected_grad.norm()
    assert error < tolerance, f"relative gradient error {error:.2e}"


def test_tiled_optimization_follows_the_untiled_one(weights: Weights) -> None:
    """20 L-BFGS steps (backtracking on) from the same start: the same iterates, to rounding."""
    config = LossConfig(
        style_layers=(("relu1_1", 0.6), ("relu2_1", 0.3), ("relu3_1", 0.1)),
        content_layers=(("relu2_2", 1.0),),
        style_weight=45.0,
    )
    model, targets, loss_weights, x = _problem(weights, config, 56, 76, 1, torch.float64)
    assert len(tile_grid(56, 76, 32, config.layers)) == 6
    steps = OptimConfig(steps=20)

    def loss_fn(image: torch.Tensor) -> LossTerms:
        return weighted_terms(image, model(image), targets, loss_weights)

    untiled = optimize(x, loss_fn, steps)
    tiled = optimize(x, loss_fn, steps, gradient=TiledObjective(model, targets, loss_weights, 32))
    assert untiled.losses[0] < 0.5 * untiled.start_losses[0]  # it did optimize
    assert tiled.losses == pytest.approx(untiled.losses, rel=1e-9)
    assert (tiled.image - untiled.image).abs().max() < 1e-7


@pytest.mark.gpu
def test_tiled_evaluation_replays_as_a_cuda_graph(weights: Weights) -> None:
    """On CUDA the whole tiled evaluation (both passes, every tile) is one captured graph: the
    replayed iterates equal the eager ones."""
    config = SHALLOW
    model, targets, loss_weights, x = _problem(weights, config, 75, 101, 2, torch.float32)
    model, x = model.cuda(), x.cuda()
    targets = type(targets)(
        content={k: v.cuda() for k, v in targets.content.items()},
        style={k: v.cuda() for k, v in targets.style.items()},
    )
    loss_weights = objective_weights([config] * 2, "cuda")
    tiled = TiledObjective(model, targets, loss_weights, 24)

    def loss_fn(image: torch.Tensor) -> LossTerms:
        return weighted_terms(image, model(image), targets, loss_weights)

    steps = OptimConfig(steps=10)
    graphed = optimize(x, loss_fn, steps, graphs=True, gradient=tiled)
    eager = optimize(x, loss_fn, steps, graphs=False, gradient=tiled)
    assert graphed.graphs == "on"
    assert torch.allclose(graphed.image, eager.image, atol=1e-4)
