"""Loss functions against hand-computed values and finite differences (tiny, fast)."""

from __future__ import annotations

import math

import pytest
import torch

from nst_batch.engine.losses import (
    LossConfig,
    Targets,
    compute_targets,
    content_loss,
    gram,
    objective,
    style_loss,
)
from nst_batch.engine.tv import tv_loss


def test_gram_by_hand() -> None:
    f = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 2, 1, 2)  # C=2, H=1, W=2
    # F F^T = [[1+4, 3+8], [3+8, 9+16]], divided by H*W = 2
    assert torch.equal(gram(f), torch.tensor([[[2.5, 5.5], [5.5, 12.5]]]))


def test_gram_is_batched_and_float32() -> None:
    f = torch.randn(3, 4, 5, 6, dtype=torch.bfloat16)
    g = gram(f)
    assert g.shape == (3, 4, 4) and g.dtype == torch.float32
    assert torch.allclose(g[1], gram(f[1:2])[0])


def test_content_loss_by_hand() -> None:
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    t = torch.full((1, 1, 2, 2), 2.0)
    # diffs -1, 0, 1, 2 -> squares 1, 0, 1, 4
    assert content_loss(x, t, "mse").item() == pytest.approx(6 / 4)
    assert content_loss(x, t, "relative").item() == pytest.approx(6 / 16)


def test_style_loss_by_hand() -> None:
    g = torch.tensor([[[2.0, 0.0], [0.0, 2.0]]])
    a = torch.tensor([[[1.0, 1.0], [1.0, 1.0]]])
    # diffs 1, -1, -1, 1 -> sum of squares 4, target energy 4
    assert style_loss(g, a, "mse").item() == pytest.approx(1.0)
    assert style_loss(g, a, "relative").item() == pytest.approx(1.0)
    assert style_loss(a, a, "relative").item() == 0.0


@pytest.mark.parametrize("normalization", ["relative", "mse", "paper"])
def test_batch_loss_is_the_sum_of_its_images(normalization: str) -> None:
    t = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 10.0)])
    x = t * 1.5
    solo = [content_loss(x[i : i + 1], t[i : i + 1], normalization) for i in range(2)]
    assert content_loss(x, t, normalization).item() == pytest.approx(sum(solo).item())
    gx, gt = gram(x), gram(t)
    solo = [style_loss(gx[i : i + 1], gt[i : i + 1], normalization) for i in range(2)]
    assert style_loss(gx, gt, normalization).item() == pytest.approx(sum(solo).item())


def test_relative_error_does_not_depend_on_scale() -> None:
    t = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 10.0)])
    x = t * 1.5  # each image 50% off: relative error 0.25 for both, whatever their scale
    assert content_loss(x[:1], t[:1]).item() == pytest.approx(0.25)
    assert content_loss(x[1:], t[1:]).item() == pytest.approx(0.25)


def test_paper_normalization_by_hand() -> None:
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    t = torch.full((1, 1, 2, 2), 2.0)
    assert content_loss(x, t, "paper").item() == pytest.approx(0.5 * 6)  # 1/2 sum
    f = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 2, 1, 2)  # N=2 channels, M=2 positions
    g_raw = torch.tensor([[5.0, 11.0], [11.0, 25.0]])  # F F^T
    a_raw = torch.tensor([[4.0, 10.0], [10.0, 20.0]])
    paper = ((g_raw - a_raw) ** 2).sum() / (4 * 2**2 * 2**2)  # eq. 4
    assert style_loss(gram(f), (a_raw / 2).unsqueeze(0), "paper").item() == pytest.approx(
        paper.item()
    )


def test_style_targets_blend_as_weighted_grams() -> None:
    cfg = LossConfig(content_layers=(("relu1_1", 1.0),), style_layers=(("relu1_1", 1.0),))
    a, b = torch.rand(1, 4, 6, 6), torch.rand(1, 4, 3, 5)  # style images of different sizes
    targets = compute_targets({"relu1_1": a}, [{"relu1_1": a}, {"relu1_1": b}], cfg, [0.7, 0.3])
    assert torch.allclose(targets.style["relu1_1"], 0.7 * gram(a) + 0.3 * gram(b))
    equal = compute_targets({"relu1_1": a}, [{"relu1_1": a}, {"relu1_1": b}], cfg)
    assert torch.allclose(equal.style["relu1_1"], 0.5 * gram(a) + 0.5 * gram(b))
    with pytest.raises(ValueError, match="does not fit 2 style"):
        compute_targets({"relu1_1": a}, [{"relu1_1": a}, {"relu1_1": b}], cfg, [1.0])


def test_tv_by_hand() -> None:
    img = torch.tensor([[0.0, 1.0], [2.0, 4.0]]).view(1, 1, 2, 2)
    # L2: one position with both neighbours: dx = 1, dy = 2 -> 1 + 4 = 5
    assert tv_loss(img, "l2").item() == pytest.approx(5.0)
    assert tv_loss(img, "l2", exponent=1.25).item() == pytest.approx(5.0**1.25, rel=1e-6)
    # L1: mean |dx| over rows (1, 2) + mean |dy| over columns (2, 3)
    assert tv_loss(img, "l1").item() == pytest.approx(1.5 + 2.5)
    assert tv_loss(torch.ones(1, 3, 8, 8)).item() == 0.0


def test_objective_weights_the_terms() -> None:
    torch.manual_seed(0)
    image = torch.rand(1, 3, 8, 8)
    feats = {"relu1_1": torch.rand(1, 4, 8, 8), "relu2_1": torch.rand(1, 6, 4, 4)}
    targets = Targets(
        content={"relu2_1": torch.rand(1, 6, 4, 4)},
        style={"relu1_1": gram(torch.rand(1, 4, 8, 8)), "relu2_1": gram(torch.rand(1, 6, 4, 4))},
    )
    cfg = LossConfig(
        content_layers=(("relu2_1", 1.0),),
        style_layers=(("relu1_1", 0.25), ("relu2_1", 0.75)),
        content_weight=2.0,
        style_weight=30.0,
        tv_weight=0.5,
        tv_kind="l1",
    )
    terms = objective(image, feats, targets, cfg)
    c = content_loss(feats["relu2_1"], targets.content["relu2_1"])
    s = 0.25 * style_loss(gram(feats["relu1_1"]), targets.style["relu1_1"]) + 0.75 * style_loss(
        gram(feats["relu2_1"]), targets.style["relu2_1"]
    )
    assert terms.content.item() == pytest.approx(2.0 * c.item(), rel=1e-6)
    assert terms.style.item() == pytest.approx(30.0 * s.item(), rel=1e-6)
    assert terms.tv.item() == pytest.approx(0.5 * tv_loss(image, "l1").item(), rel=1e-6)
    assert terms.total.item() == pytest.approx(
        terms.content.item() + terms.style.item() + terms.tv.item(), rel=1e-6
    )
    zero_style = objective(image, feats, targets, LossConfig(**{**cfg.__dict__, "style_weight": 0}))
    assert zero_style.style.item() == 0.0


@pytest.mark.parametrize("normalization", ["relative", "mse"])
def test_loss_gradients_match_finite_differences(normalization: str) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 5, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    t = torch.rand(1, 3, 5, 4, dtype=torch.float64, generator=gen)
    assert torch.autograd.gradcheck(lambda a: content_loss(a, t, normalization), (x,))
    assert torch.autograd.gradcheck(
        lambda a: style_loss(gram(a).double(), gram(t).double(), normalization), (x,)
    )
    assert torch.autograd.gradcheck(lambda a: tv_loss(a, "l2", 1.25), (x,))
    assert torch.autograd.gradcheck(lambda a: tv_loss(a, "l1"), (x,))


def test_tv_exponent_below_one_has_finite_gradient_on_flat_image() -> None:
    x = torch.full((1, 3, 4, 4), 0.5, requires_grad=True)
    tv_loss(x, "l2", exponent=0.5).backward()
    assert x.grad is not None and all(math.isfinite(v) for v in x.grad.flatten().tolist())


def _old_gram(f: torch.Tensor) -> torch.Tensor:
    """The formula before layouts were kept: NCHW copy, float32 for low precision, F F^T."""
    b, c, h, w = f.shape
    flat = f.reshape(b, c, h * w)
    flat = flat.float() if flat.dtype == torch.bfloat16 else flat
    return torch.bmm(flat, flat.transpose(1, 2)) / (h * w)


LAYOUTS = [torch.contiguous_format, torch.channels_last]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_gram_and_its_gradient_match_the_old_formula(
    layout: torch.memory_format, dtype: torch.dtype
) -> None:
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(3, 16, 7, 9, generator=gen).to(dtype)
    weights = torch.randn(3, 16, 16, generator=gen, dtype=torch.float64)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-5}[dtype]
    grads = []
    for fn in (gram, _old_gram):
        f = base.contiguous(memory_format=layout).requires_grad_(True)
        g = fn(f)
        assert g.dtype == (torch.float32 if dtype == torch.bfloat16 else dtype)
        (g.double() * weights).sum().backward()
        assert f.grad is not None
        grads.append((g.detach(), f.grad))
    (new, new_grad), (old, old_grad) = grads
    assert torch.allclose(new, old, rtol=tol, atol=tol)
    if dtype == torch.bfloat16:  # a float32 gradient rounded once, against a bf16 product
        assert torch.allclose(new_grad.float(), old_grad.float(), rtol=1e-2, atol=1e-2)
    else:
        assert torch.allclose(new_grad, old_grad, rtol=tol, atol=tol)
    assert new_grad.dtype == dtype
    # The gradient comes back in the features' layout (the old one always returned NCHW).
    assert new_grad.is_contiguous(memory_format=layout)


def test_gram_gradient_matches_finite_differences_channels_last() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 4, 5, dtype=torch.float64, generator=gen)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    assert not x.is_contiguous()
    assert torch.autograd.gradcheck(lambda a: gram(a), (x,))


def test_gram_keeps_the_float32_copy_on_cpu() -> None:
    from nst_batch.engine.losses import _fp32_products

    f = torch.randn(1, 4, 3, 3, dtype=torch.bfloat16)
    assert not _fp32_products(f.reshape(1, 4, 9))  # aten::bmm.dtype is CUDA only
    assert torch.equal(gram(f), _old_gram(f))


def test_gram_backward_keeps_the_features_not_a_float32_copy() -> None:
    """What the product saves for the backward is the bf16 features themselves: the float32
    copy of the forward is not held until the backward (memory) nor multiplied again (time)."""
    f = torch.randn(1, 4, 3, 3, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    g = gram(f.requires_grad_(True))
    product = g.grad_fn.next_functions[0][0]  # under the division by the positions
    (saved,) = product.saved_tensors
    assert saved.dtype == torch.bfloat16 and saved.data_ptr() == f.data_ptr()
