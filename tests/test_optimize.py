"""The optimization loop with real weights on tiny images (CPU)."""

from __future__ import annotations

import pytest
import torch

from nst_batch.config import StylizeConfig
from nst_batch.demo import swirl_painting
from nst_batch.engine.losses import LossConfig, compute_targets, gram, objective, style_loss
from nst_batch.engine.model import ModelConfig
from nst_batch.engine.optimize import OptimConfig, Progress
from nst_batch.engine.weights import Weights
from nst_batch.images import to_tensor
from nst_batch.transfer import stylize_tensors
from tests.conftest import content_picture, make_model

LOSS = LossConfig()


@pytest.fixture(scope="module")
def model(weights: Weights) -> torch.nn.Module:
    return make_model(weights, LOSS.layers)


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    return to_tensor(content_picture(64, 64)), to_tensor(swirl_painting(64, seed=3, strokes=300))


def style_distance(model: torch.nn.Module, image: torch.Tensor, style: torch.Tensor) -> float:
    """Mean relative Gram error over the style layers."""
    with torch.no_grad():
        fx, fs = model(image), model(style)
    errors = [style_loss(gram(fx[n]), gram(fs[n])).item() for n, _ in LOSS.style_layers]
    return sum(errors) / len(errors)


def test_stylize_64px_moves_far_towards_the_style(model, images) -> None:
    content, style = images
    config = StylizeConfig(size=64, optim=OptimConfig(steps=40))
    seen: list[Progress] = []
    result = stylize_tensors(content, style, config, model, seen.append)
    assert [p.step for p in seen] == list(range(1, 41)) and seen[-1].total == 40
    before = style_distance(model, content, style)
    after = style_distance(model, result.image, style)
    assert after < 0.25 * before, (before, after)
    assert result.loss < seen[0].loss
    assert result.image.min() >= 0.0 and result.image.max() <= 1.0


def test_returned_image_is_what_was_optimized(model, images) -> None:
    """The loss reported for the result is the loss of exactly that (saved) image."""
    content, style = images
    # fp32: a bf16 run's losses are measured with bf16 convolutions, not this fp32 objective
    config = StylizeConfig(size=64, model=ModelConfig(precision="fp32"), optim=OptimConfig(steps=8))
    result = stylize_tensors(content, style, config, model)
    with torch.no_grad():
        targets = compute_targets(model(content), model(style), LOSS)
        again = objective(result.image, model(result.image), targets, LOSS).total.item()
    assert again == pytest.approx(result.loss, rel=1e-5)


def test_same_seed_is_bit_identical_on_cpu(model, images) -> None:
    content, style = images
    config = StylizeConfig(size=64, init="noise", seed=7, optim=OptimConfig(steps=5))
    a = stylize_tensors(content, style, config, model)
    b = stylize_tensors(content, style, config, model)
    assert torch.equal(a.image, b.image)
    assert [p.loss for p in a.history] == [p.loss for p in b.history]
    other = StylizeConfig(size=64, init="noise", seed=8, optim=OptimConfig(steps=5))
    assert not torch.equal(stylize_tensors(content, style, other, model).image, a.image)


def test_adam_decreases_the_loss(model, images) -> None:
    content, style = images
    config = StylizeConfig(size=64, optim=OptimConfig(optimizer="adam", steps=30, lr=0.02))
    result = stylize_tensors(content, style, config, model)
    assert result.history[-1].loss < 0.7 * result.history[0].loss


def test_keyboard_interrupt_returns_best_so_far(model, images) -> None:
    content, style = images

    def stop_at_three(p: Progress) -> None:
        if p.step == 3:
            raise KeyboardInterrupt

    config = StylizeConfig(size=64, optim=OptimConfig(steps=100))
    result = stylize_tensors(content, style, config, model, stop_at_three)
    assert result.interrupted and result.steps == 3
    assert result.loss == min(p.loss for p in result.history)


def test_cancel_check_runs_before_every_step_also_between_host_reads() -> None:
    """A daemon's shutdown check must not wait for the loop's next host read (every 25 steps
    on CUDA): it runs before every step, and what it raises ends the loop and propagates."""
    from nst_batch.engine.losses import LossTerms
    from nst_batch.engine.optimize import optimize

    evaluated: list[int] = []

    def loss_fn(x: torch.Tensor) -> LossTerms:
        evaluated.append(1)
        total = ((x - 0.3) ** 2).sum(dim=(1, 2, 3))
        return LossTerms(content=total, style=total * 0, tv=total * 0, total=total)

    class Cancelled(Exception):
        pass

    def cancel_check() -> None:
        if len(evaluated) == 3:
            raise Cancelled

    seen: list[Progress] = []
    config = OptimConfig(steps=100, sync_every=25)
    with pytest.raises(Cancelled):
        optimize(torch.rand(1, 3, 8, 8), loss_fn, config, seen.append, cancel_check=cancel_check)
    assert len(evaluated) == 3 and seen == []  # stopped before step 4, no host read yet
