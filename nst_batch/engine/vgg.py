"""VGG19 feature stack, built from one table of layers.

The module list mirrors torchvision's ``vgg19().features`` index for index, so its state-dict keys
(``"0.weight"``, ``"0.bias"``, ``"2.weight"`` ...) are the same and torchvision's weight file loads
unchanged. Everywhere else in nst-batch layers are referred to by name (``relu4_2``); this table
is the only place that knows their positions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

Pooling = Literal["max", "avg"]

# Channels of each conv block; block 1 and 2 have two convs, blocks 3-5 have four.
_BLOCKS: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))


@dataclass(frozen=True)
class LayerSpec:
    name: str  # e.g. "conv3_2", "relu3_2", "pool3"
    kind: Literal["conv", "relu", "pool"]
    in_channels: int
    out_channels: int
    scale: int  # spatial downsampling of this layer's output relative to the input image


def _build_table() -> tuple[LayerSpec, ...]:
    table: list[LayerSpec] = []
    channels, scale = 3, 1
    for block, (width, n_convs) in enumerate(_BLOCKS, start=1):
        for i in range(1, n_convs + 1):
            table.append(LayerSpec(f"conv{block}_{i}", "conv", channels, width, scale))
            table.append(LayerSpec(f"relu{block}_{i}", "relu", width, width, scale))
            channels = width
        scale *= 2
        table.append(LayerSpec(f"pool{block}", "pool", width, width, scale))
    return tuple(table)


# The table. Position i is module "i" of torchvision's vgg19().features.
LAYERS: tuple[LayerSpec, ...] = _build_table()
LAYER_INDEX: Mapping[str, int] = {spec.name: i for i, spec in enumerate(LAYERS)}
LAYER_NAMES: tuple[str, ...] = tuple(spec.name for spec in LAYERS)
CONV_NAMES: tuple[str, ...] = tuple(spec.name for spec in LAYERS if spec.kind == "conv")


def layer_spec(name: str) -> LayerSpec:
    """The table row for a layer name; a clear error for a name that is not a VGG19 layer."""
    try:
        return LAYERS[LAYER_INDEX[name]]
    except KeyError:
        raise ValueError(
            f"unknown VGG19 layer {name!r}; "
            "layers are named conv1_1 ... relu5_4 and pool1 ... pool5"
        ) from None


def conv_key(name: str) -> str:
    """State-dict key prefix of a conv layer in torchvision layout: ``conv1_1`` -> ``"0"``."""
    if layer_spec(name).kind != "conv":
        raise ValueError(f"{name!r} is not a conv layer")
    return str(LAYER_INDEX[name])


@dataclass(frozen=True)
class Normalization:
    """Per-channel affine map from RGB in [0, 1] to what the weights were trained on.

    ``(x - mean) / std`` channel-wise. torchvision's weights use ImageNet mean/std; the original
    Caffe weights use 0-255 mean-subtracted pixels, i.e. ``mean = caffe_mean / 255`` and
    ``std = 1 / 255`` (the BGR channel order is folded into the first conv's weights).
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class VGG19Features(nn.Module):
    """VGG19 conv stack truncated after the deepest requested layer.

    Input: RGB in [0, 1], shape (B, 3, H, W). Output: ``{layer name: (B, C, H / s, W / s)}`` for the
    requested layers. The module applies its weights' normalization itself so callers never see
    weight-specific pixel scales.
    """

    def __init__(
        self,
        layers: Iterable[str],
        normalization: Normalization,
        pooling: Pooling = "max",
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        wanted = tuple(dict.fromkeys(layers))  # keep order, drop duplicates
        if not wanted:
            raise ValueError("at least one output layer is needed")
        if pooling not in ("max", "avg"):
            raise ValueError(f"pooling must be 'max' or 'avg', not {pooling!r}")
        for name in wanted:
            layer_spec(name)  # a clear error for a misspelt name
        depth = max(LAYER_INDEX[name] for name in wanted) + 1
        self.output_layers = wanted
        self.pooling = pooling
        # NHWC activations are faster for oneDNN (CPU) and cuDNN convolutions; the input image and
        # its gradient keep the caller's layout, so optimizers can flatten them.
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.register_buffer("mean", torch.tensor(normalization.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(normalization.std).view(1, 3, 1, 1))
        # Children are named "0", "1", ... exactly like torchvision's features Sequential.
        for i, spec in enumerate(LAYERS[:depth]):
            self.add_module(str(i), _make_layer(spec, pooling))
        self.to(memory_format=self.memory_format)
        self._names = LAYER_NAMES[:depth]
        self._wanted = frozenset(wanted)

    @property
    def depth(self) -> int:
        return len(self._names)

    def forward(self, image: Tensor) -> dict[str, Tensor]:  # image: (B, 3, H, W) in [0, 1]
        x = ((image - self.mean) / self.std).contiguous(memory_format=self.memory_format)
        out: dict[str, Tensor] = {}
        for name, module in zip(self._names, self.children(), strict=True):
            x = module(x)
            if name in self._wanted:
                out[name] = x
        return out


def _make_layer(spec: LayerSpec, pooling: Pooling) -> nn.Module:
    if spec.kind == "conv":
        return nn.Conv2d(spec.in_channels, spec.out_channels, kernel_size=3, padding=1)
    if spec.kind == "relu":
        # Not in-place: a requested conv output must survive the ReLU that follows it.
        return nn.ReLU(inplace=False)
    if pooling == "max":
        return nn.MaxPool2d(kernel_size=2, stride=2)
    return nn.AvgPool2d(kernel_size=2, stride=2)


def load_state(
    model: VGG19Features, state: Mapping[str, Tensor], *, source: str = "weights"
) -> VGG19Features:
    """Copy a torchvision-layout state dict (``"N.weight"``/``"N.bias"``) into a truncated model.

    Keys past the model's depth are ignored (a model truncated at relu4_2 needs no block-5 weights);
    a missing or mis-shaped key is an error naming the layer.
    """
    own = model.state_dict()
    for key, param in own.items():
        if key in ("mean", "std"):
            continue
        if key not in state:
            index = int(key.split(".")[0])
            raise ValueError(f"{source}: no tensor {key!r} for layer {LAYER_NAMES[index]}")
        if tuple(state[key].shape) != tuple(param.shape):
            raise ValueError(
                f"{source}: {key!r} has shape {tuple(state[key].shape)}, "
                f"VGG19 needs {tuple(param.shape)}"
            )
        with torch.no_grad():
            param.copy_(state[key])
    return model


def conv_flops(deepest: str, height: int, width: int) -> int:
    """Floating-point operations (2 per multiply-add) of the 3x3 convolutions of one forward
    pass of a (1, 3, height, width) image through the stack up to ``deepest``."""
    total, h, w = 0, height, width
    for spec in LAYERS[: LAYER_INDEX[layer_spec(deepest).name] + 1]:
        if spec.kind == "conv":
            total += 2 * spec.in_channels * spec.out_channels * 9 * h * w
        elif spec.kind == "pool":
            h, w = h // 2, w // 2  # kernel 2, stride 2, floor: as nn.MaxPool2d(2, 2)
    return total


def iteration_flops(
    layers: Iterable[str], style_layers: Iterable[str], height: int, width: int
) -> int:
    """FLOPs of one optimization step for one image: the forward convolutions, the backward
    pass to the input (one data-gradient convolution per forward one; no weight gradients),
    and each style layer's Gram matrix forward (2 C^2 HW) and backward (2 C^2 HW). Element-wise
    work (ReLU, pooling, losses, the optimizer) is memory-bound and not counted."""
    layers = list(layers)
    deepest = max(layers, key=lambda n: LAYER_INDEX[layer_spec(n).name])
    total = 2 * conv_flops(deepest, height, width)
    for name in style_layers:
        spec = layer_spec(name)
        h, w = height, width
        for row in LAYERS[: LAYER_INDEX[name] + 1]:
            if row.kind == "pool":
                h, w = h // 2, w // 2
        total += 4 * spec.out_channels**2 * h * w
    return total
