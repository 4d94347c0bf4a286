"""The layer table, torchvision key compatibility, and features against a direct computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nst_batch.engine.vgg import (
    CONV_NAMES,
    LAYER_INDEX,
    LAYER_NAMES,
    VGG19Features,
    layer_spec,
)
from nst_batch.engine.weights import BUNDLED, Weights, bundled_path
from tests.conftest import make_model

# torchvision.models.vgg19().features: convs at these Sequential indices (cfg "E").
TORCHVISION_CONV_INDICES = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
CAFFE_BGR_MEAN = torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)


def test_table_matches_torchvision_layout() -> None:
    assert len(LAYER_NAMES) == 37
    assert [LAYER_INDEX[n] for n in CONV_NAMES] == TORCHVISION_CONV_INDICES
    assert LAYER_NAMES[:5] == ("conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1")
    assert LAYER_NAMES[-3:] == ("conv5_4", "relu5_4", "pool5")
    assert layer_spec("relu4_2").out_channels == 512 and layer_spec("relu4_2").scale == 8


def test_full_state_dict_keys_are_torchvision_keys() -> None:
    model = VGG19Features(["pool5"], BUNDLED.normalization)
    keys = [k for k in model.state_dict() if k not in ("mean", "std")]
    expected = [f"{i}.{p}" for i in TORCHVISION_CONV_INDICES for p in ("weight", "bias")]
    assert keys == expected
    assert model.state_dict()["34.weight"].shape == (512, 512, 3, 3)


def test_truncated_after_deepest_requested_layer() -> None:
    model = VGG19Features(["relu1_1", "relu2_1"], BUNDLED.normalization)
    assert model.depth == LAYER_INDEX["relu2_1"] + 1 == 7
    out = model(torch.rand(2, 3, 16, 12))
    assert set(out) == {"relu1_1", "relu2_1"}
    assert out["relu2_1"].shape == (2, 128, 8, 6)


def test_unknown_layer_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown VGG19 layer 'relu6_1'"):
        VGG19Features(["relu6_1"], BUNDLED.normalization)


def _raw_bundled() -> dict[str, torch.Tensor]:
    return torch.load(bundled_path(), map_location="cpu", weights_only=True)


def test_features_match_direct_conv_on_caffe_input(weights: Weights) -> None:
    """relu1_1 ... conv2_1 from the raw quantized file, fed BGR 0-255 mean-subtracted pixels."""
    raw = _raw_bundled()

    def conv(x: torch.Tensor, keras: str) -> torch.Tensor:
        w = raw[keras + "_W_table"][raw[keras + "_W_q"].long()]
        return F.conv2d(x, w, raw[keras + "_b"], padding=1)

    torch.manual_seed(0)
    image = torch.rand(2, 3, 24, 20)  # RGB in [0, 1]
    caffe = image.flip(1) * 255 - CAFFE_BGR_MEAN  # what the original network was trained on
    relu1_1 = conv(caffe, "block1_conv1").relu()
    relu1_2 = conv(relu1_1, "block1_conv2").relu()
    pool1 = F.max_pool2d(relu1_2, 2)
    conv2_1 = conv(pool1, "block2_conv1")

    model = make_model(weights, ("relu1_1", "relu1_2", "pool1", "conv2_1"))
    out = model(image)
    for name, expected in [
        ("relu1_1", relu1_1),
        ("relu1_2", relu1_2),
        ("pool1", pool1),
        ("conv2_1", conv2_1),
    ]:
        scale = expected.abs().max()
        assert (out[name] - expected).abs().max() <= 1e-5 * scale, name


def test_avg_pooling(weights: Weights) -> None:
    model = make_model(weights, ("relu1_2", "pool1"), pooling="avg")
    out = model(torch.rand(1, 3, 8, 8))
    assert torch.allclose(out["pool1"], F.avg_pool2d(out["relu1_2"], 2))


def test_requested_conv_output_survives_its_relu(weights: Weights) -> None:
    out = make_model(weights, ("conv1_1", "relu1_1"))(torch.rand(1, 3, 8, 8))
    assert (out["conv1_1"] < 0).any()  # not clobbered by an in-place ReLU
    assert torch.equal(out["relu1_1"], out["conv1_1"].relu())


def test_objective_gradient_through_vgg_matches_finite_differences(weights: Weights) -> None:
    """d(loss)/d(pixels) by autograd vs central differences, real weights, float64."""
    from nst_batch.engine.losses import LossConfig, compute_targets, objective

    cfg = LossConfig(
        content_layers=(("relu2_1", 1.0),),
        style_layers=(("relu1_1", 0.5), ("relu2_1", 0.5)),
        tv_weight=0.1,
    )
    model = make_model(weights, cfg.layers).double()
    gen = torch.Generator().manual_seed(0)
    content, style = (torch.rand(1, 3, 8, 8, generator=gen, dtype=torch.float64) for _ in "cs")
    with torch.no_grad():
        targets = compute_targets(model(content), model(style), cfg)

    def loss(x: torch.Tensor) -> torch.Tensor:
        return objective(x, model(x), targets, cfg).total

    x = torch.rand(1, 3, 8, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(loss(x), x)
    eps = 1e-6
    for index in [(0, 0, 0, 0), (0, 1, 3, 4), (0, 2, 7, 7), (0, 0, 5, 2), (0, 1, 0, 6)]:
        bump = torch.zeros_like(x)
        bump[index] = eps
        with torch.no_grad():
            numeric = (loss(x + bump) - loss(x - bump)) / (2 * eps)
        assert grad[index].item() == pytest.approx(numeric.item(), rel=1e-4, abs=1e-8), index


def test_flops_from_the_layer_table_match_the_published_vgg19_count() -> None:
    from nst_batch.engine.vgg import conv_flops, iteration_flops

    # VGG19's 16 convolutions at 224x224: 19.5 G multiply-adds (Simonyan & Zisserman; the
    # often-quoted 19.6 G includes the fully connected layers' 0.12 G).
    assert conv_flops("relu5_4", 224, 224) / 2 == pytest.approx(19.51e9, rel=0.005)
    assert conv_flops("conv1_1", 10, 10) == 2 * 3 * 64 * 9 * 100
    one = iteration_flops(["relu1_1"], ["relu1_1"], 10, 10)
    assert one == 2 * conv_flops("relu1_1", 10, 10) + 4 * 64**2 * 100
