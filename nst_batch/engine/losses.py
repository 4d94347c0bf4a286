"""Gatys et al. losses as pure functions of tensors.

Nothing here holds state: targets are plain tensors computed once before the optimization loop,
and :func:`objective` combines the terms with the weights of a :class:`LossConfig`.

How to read the weights
-----------------------
With the default ``normalization="relative"`` every content and style term is a *relative* squared
error, ``||X - T||^2 / ||T||^2``: 0 means a perfect match, 1 means as far off as an all-zero
feature map. Such terms do not depend on the image size, the number of channels in a layer, or
the pixel scale of the weights (Caffe 0-255 vs torchvision's unit-variance input), so the same
``content_weight``/``style_weight`` give the same balance at 256 px and 2048 px, with bundled or
torchvision weights. ``style_weight / content_weight`` is the trade-off the paper calls
``beta / alpha``. Per-layer weights multiply their layer's term as given (the defaults sum to 1
in each group, so ``style_weight`` is the weight of the average style layer sum).
``normalization="mse"`` gives plain mean squared errors and ``"paper"`` the exact formulas of the
paper (eq. 1 and 4), for recipes that were tuned that way (see :mod:`nst_batch.params`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from nst_batch.engine.tv import TVKind, tv_terms
from nst_batch.engine.vgg import layer_spec
from nst_batch.errors import ConfigError
from nst_batch.validation import check_fields

Normalize = Literal["relative", "mse", "paper"]
LOW_PRECISION = (torch.float16, torch.bfloat16)  # dtypes whose sums and products go to float32

# The paper's style layers with equal weight (Gatys et al. 2016, Fig. 2 / Sec. 3).
PAPER_STYLE_LAYERS: tuple[tuple[str, float], ...] = (
    ("relu1_1", 0.2),
    ("relu2_1", 0.2),
    ("relu3_1", 0.2),
    ("relu4_1", 0.2),
    ("relu5_1", 0.2),
)
# nst-batch's default: the same layers weighted 256:64:16:4:1 (crowsonkb's ratio), summing to 1.
# With equal weights each layer's *relative* Gram error counts as much as any other, and matching
# relu4_1/relu5_1 (receptive fields of 68 and 156 px) that closely copies object-level structure
# of the painting into the photo: faces, eyes, hands. Weighting towards the shallow layers keeps
# the brushwork, palette and shapes without the objects (benchmarks/results/style-panel-*).
# Paired with style_weight 45, which keeps the shallow layers' texture distance below the old
# default's on the panel (30 did not quite: benchmarks/results/style-panel-512-cpu.md).
DEFAULT_STYLE_LAYERS: tuple[tuple[str, float], ...] = tuple(
    (name, w / 341) for (name, _), w in zip(PAPER_STYLE_LAYERS, (256, 64, 16, 4, 1), strict=True)
)
DEFAULT_STYLE_WEIGHT = 45.0
DEFAULT_CONTENT_LAYERS: tuple[tuple[str, float], ...] = (("relu4_2", 1.0),)


@dataclass(frozen=True)
class LossConfig:
    """Weights of the objective ``cw * content + sw * style + tw * tv``.

    Defaults give a strongly stylised but recognisable picture at 512 px with the bundled weights.
    """

    content_layers: tuple[tuple[str, float], ...] = DEFAULT_CONTENT_LAYERS  # layers, weights
    style_layers: tuple[tuple[str, float], ...] = DEFAULT_STYLE_LAYERS  # layers, weights
    content_weight: Annotated[float, Field(ge=0)] = 1.0  # weight of the content loss
    style_weight: Annotated[float, Field(ge=0)] = DEFAULT_STYLE_WEIGHT  # weight of the style loss
    tv_weight: Annotated[float, Field(ge=0)] = 1.0  # weight of the total variation (smoothness)
    tv_kind: TVKind = "l2"  # total variation of squared ("l2") or absolute ("l1") differences
    tv_exponent: Annotated[float, Field(gt=0)] = 1.0  # the Keras recipe uses 1.25 on (dx^2 + dy^2)
    normalization: Normalize = "relative"  # loss scale: relative errors, plain MSE or the paper's

    def __post_init__(self) -> None:
        check_fields(self)  # ranges (Field) and choices (Literal): ConfigError naming the field
        for name, _ in self.content_layers + self.style_layers:
            try:
                layer_spec(name)
            except ValueError as err:
                raise ConfigError(str(err)) from None
        for name, w in self.content_layers + self.style_layers:
            if w < 0:
                raise ConfigError(f"layer weight of {name} must not be negative")
        if self.content_weight == self.style_weight == self.tv_weight == 0:
            raise ConfigError(
                "content_weight, style_weight and tv_weight are all 0: nothing to optimize; "
                "give at least one a positive weight"
            )
        if not self.content_layers and not self.style_layers:
            raise ConfigError("the objective needs at least one content or style layer")

    @property
    def layers(self) -> tuple[str, ...]:
        """Every layer the objective reads, content first, without duplicates."""
        names = [n for n, _ in self.content_layers] + [n for n, _ in self.style_layers]
        return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class Targets:
    """Per-layer targets: content feature maps and style Gram matrices, computed once."""

    content: Mapping[str, Tensor]  # layer -> (B, C, H, W)
    style: Mapping[str, Tensor]  # layer -> (B, C, C)
    # layer -> (B,) sum P^2 of each content map: the "relative" content term's denominator,
    # made here once rather than at every evaluation (a float32 square of a print-size image's
    # relu4_2 map is a third of a GB, twice)
    content_norms: Mapping[str, Tensor] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        norms = {name: sum_of_squares(t) for name, t in self.content.items()}
        object.__setattr__(self, "content_norms", norms)


@dataclass(frozen=True)
class LossTerms:
    """The three weighted terms (already multiplied by their weights) and their sum."""

    content: Tensor  # scalar
    style: Tensor  # scalar
    tv: Tensor  # scalar
    total: Tensor = field(repr=False)  # scalar, the value that is optimized


def _wide(t: Tensor) -> Tensor:
    """Low-precision tensors go to float32 for reductions; float32/float64 stay as they are."""
    return t.float() if t.dtype in LOW_PRECISION else t


def gram(features: Tensor) -> Tensor:
    """Gram matrix normalised by the number of positions: ``G = F F^T / (H W)``.

    features: (B, C, H, W) -> (B, C, C). Computed in float32 even for low-precision inputs, since
    the sums over H*W positions overflow fp16/bf16 range at large images.

    The paper (Gatys et al. 2016, eq. 4-5) uses the unnormalised ``G = F F^T`` and
    ``E_l = 1 / (4 N_l^2 M_l^2) * sum_ij (G_ij - A_ij)^2`` with ``N_l`` channels and ``M_l = H W``
    positions. Dividing by ``M_l`` here makes targets taken at one image size comparable with an
    output of another; the remaining ``1 / (4 N_l^2)`` is a per-layer constant that
    :func:`style_loss` replaces by its normalisation.

    The features keep their memory layout, forward and backward: channels_last features (the
    network's) are read as their (B, H W, C) view and ``G = F^T F``, so no NCHW copy is made and
    the gradient goes back channels_last; contiguous NCHW ones as (B, C, H W), ``G = F F^T``. On
    CUDA, bf16/fp16 features go into the product as they are, accumulated and returned in float32
    (tensor cores, no float32 copy; a product of two bf16 numbers is exact in float32). Elsewhere
    the forward product is of a float32 copy, dropped at once; the backward multiplies the
    features themselves, as its result (their gradient) is rounded to their dtype in any case.
    """
    b, c, h, w = features.shape
    positions = features.permute(0, 2, 3, 1)  # (B, H, W, C): a dense view for channels_last
    by_position = not features.is_contiguous() and positions.is_contiguous()
    # (B, H W, C) is a view (no copy) for channels_last; (B, C, H W) for contiguous NCHW
    f = positions.reshape(b, h * w, c) if by_position else features.reshape(b, c, h * w)
    widen = f.dtype in LOW_PRECISION and not _fp32_products(f)
    return _GramProduct.apply(f, by_position, widen) / (h * w)  # (B, C, C)


# (device, dtype) -> whether torch.bmm(..., out_dtype=torch.float32) works there, probed once.
_FP32_PRODUCTS: dict[tuple[torch.device, torch.dtype], bool] = {}


def _fp32_products(f: Tensor) -> bool:
    """Whether low-precision ``f`` can go into :func:`torch.bmm` as it is, with a float32 result
    (``aten::bmm.dtype``: CUDA only). Probed in eager mode on first use, never inside a CUDA graph
    capture (the loop's first evaluations are eager warm-ups); a failed probe keeps the float32
    copy."""
    if f.device.type != "cuda" or f.dtype not in LOW_PRECISION:
        return False
    key = (f.device, f.dtype)
    if key not in _FP32_PRODUCTS:
        if torch.cuda.is_current_stream_capturing():
            return False  # not probed here: the float32 copy, as before
        try:
            probe = torch.ones(1, 2, 2, device=f.device, dtype=f.dtype)
            out = torch.bmm(probe, probe, out_dtype=torch.float32)
            _FP32_PRODUCTS[key] = out.dtype == torch.float32 and bool((out == 2).all())
        except (RuntimeError, TypeError, NotImplementedError):
            _FP32_PRODUCTS[key] = False
    return _FP32_PRODUCTS[key]


def _bmm32(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` batched, in float32 (for CUDA bf16/fp16 inputs: accumulated and returned)."""
    if a.dtype in LOW_PRECISION:
        return torch.bmm(a, b, out_dtype=torch.float32)
    return torch.bmm(a, b)


class _GramProduct(torch.autograd.Function):
    """``F F^T`` of (B, C, N) features, or ``F^T F`` of (B, N, C) ones (``by_position``), with a
    backward of one batched product, ``(dG + dG^T) F`` or ``F (dG + dG^T)``, where autograd's own
    takes two (one per operand); the Gram matrices are ~12% of a CPU step. ``widen``: the forward
    product is float32, of a float32 copy of low-precision features. The gradient has the
    features' layout and dtype."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, f: Tensor, by_position: bool, widen: bool
    ) -> Tensor:
        ctx.save_for_backward(f)
        ctx.by_position = by_position  # type: ignore[attr-defined]
        g = f.float() if widen else f  # the copy lives for this product only
        if by_position:
            return _bmm32(g.transpose(1, 2), g)  # (B, C, C)
        return _bmm32(g, g.transpose(1, 2))  # (B, C, C)

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: Tensor
    ) -> tuple[Tensor, None, None]:
        (f,) = ctx.saved_tensors  # type: ignore[attr-defined]
        sym = (grad + grad.transpose(1, 2)).to(f.dtype)  # (B, C, C); bf16 for bf16 features
        if ctx.by_position:  # type: ignore[attr-defined]
            return torch.bmm(f, sym), None, None  # (B, N, C)
        return torch.bmm(sym, f), None, None  # (B, C, N)


def _per_image(x: Tensor, target: Tensor, reduce: Literal["sum", "mean", "relative"]) -> Tensor:
    """Squared error of each image of a batch (B, ...) -> (B,)."""
    x, target = _wide(x), _wide(target)
    dims = tuple(range(1, x.dim()))
    diff = (x - target).pow(2)
    if reduce == "sum":
        return diff.sum(dim=dims)
    if reduce == "mean":
        return diff.mean(dim=dims)
    return diff.sum(dim=dims) / target.pow(2).sum(dim=dims).clamp_min(1e-12)


def content_terms(
    features: Tensor, target: Tensor, normalization: Normalize = "relative"
) -> Tensor:
    """Squared error between feature maps (B, C, H, W), one value per image: (B,).

    ``"paper"``: eq. 1 of Gatys et al., ``1/2 sum (F - P)^2``.
    ``"mse"``: ``mean (F - P)^2`` (the paper's value times ``2 / (C H W)``).
    ``"relative"``: ``sum (F - P)^2 / sum P^2``.
    """
    return content_from_sum(squared_error(features, target), target, normalization)


def squared_error(features: Tensor, target: Tensor) -> Tensor:
    """``sum (F - P)^2`` of each image (B, ...) -> (B,), in float32 or wider: a sum over positions,
    so the sums of a map's tiles add up to the map's (:mod:`nst_batch.engine.tiled`)."""
    return _per_image(features, target, "sum")


@torch.no_grad()
def sum_of_squares(t: Tensor) -> Tensor:
    """``sum t^2`` of each image (B, C, ...) -> (B,), in float32 or wider, a few channels at a
    time: never a widened copy of the whole map."""
    parts = [_wide(part).pow(2).flatten(1).sum(dim=1) for part in t.split(16, dim=1)]
    return torch.stack(parts).sum(dim=0)


def content_from_sum(
    error: Tensor, target: Tensor, normalization: Normalize, norm: Tensor | None = None
) -> Tensor:
    """:func:`content_terms` from the summed squared error (B,) of the whole map: linear in it.
    ``norm`` is the target's :func:`sum_of_squares` when made already (:class:`Targets`)."""
    if normalization == "paper":
        return 0.5 * error
    if normalization == "mse":
        return error / target[0].numel()
    norm = sum_of_squares(target) if norm is None else norm
    return error / norm.clamp_min(1e-12)


def style_terms(
    gram_x: Tensor, gram_target: Tensor, normalization: Normalize = "relative"
) -> Tensor:
    """Squared error between Gram matrices (B, C, C), one value per image: (B,).

    ``"paper"``: eq. 4 of Gatys et al., ``E_l = 1/(4 N^2 M^2) sum (G - A)^2`` for unnormalised
    Grams, which with :func:`gram`'s ``G / M`` is ``1/4 mean_ij (G_ij - A_ij)^2``.
    ``"mse"``: ``mean_ij (G_ij - A_ij)^2`` (``4 E_l``).
    ``"relative"``: ``sum_ij (G_ij - A_ij)^2 / sum_ij A_ij^2``.
    """
    if normalization == "paper":
        return 0.25 * _per_image(gram_x, gram_target, "mean")
    return _per_image(gram_x, gram_target, "mean" if normalization == "mse" else "relative")


# A batch's loss is the sum of its images' losses, so a job's gradient never depends on its
# batch mates (batched jobs, nst_batch.jobs.run_batch).
def content_loss(features: Tensor, target: Tensor, normalization: Normalize = "relative") -> Tensor:
    """:func:`content_terms` summed over the batch."""
    return content_terms(features, target, normalization).sum()


def style_loss(
    gram_x: Tensor, gram_target: Tensor, normalization: Normalize = "relative"
) -> Tensor:
    """:func:`style_terms` summed over the batch."""
    return style_terms(gram_x, gram_target, normalization).sum()


def compute_targets(
    content_features: Mapping[str, Tensor],
    style_features: Mapping[str, Tensor] | Sequence[Mapping[str, Tensor]],
    config: LossConfig,
    blend: Sequence[float] | None = None,
) -> Targets:
    """Content feature maps and style Gram matrices for the layers of ``config``.

    Several style images (each image's features may have its own size) blend as the weighted mean
    of their Gram matrices, ``A = sum_k w_k A_k / sum_k w_k``; ``blend=None`` weighs them equally.
    """
    styles = [style_features] if isinstance(style_features, Mapping) else list(style_features)
    grams = [{n: gram(f[n]) for n, _ in config.style_layers} for f in styles]
    return blend_targets(content_features, grams, config, blend)


def blend_targets(
    content_features: Mapping[str, Tensor],
    style_grams: Sequence[Mapping[str, Tensor]],
    config: LossConfig,
    blend: Sequence[float] | None = None,
) -> Targets:
    """:func:`compute_targets` from the style images' Gram matrices (however computed: whole
    or tile by tile, :mod:`nst_batch.engine.tiled`)."""
    weights = [1.0] * len(style_grams) if blend is None else [float(w) for w in blend]
    if len(weights) != len(style_grams) or sum(weights) <= 0 or min(weights) < 0:
        raise ValueError(f"style blend {weights} does not fit {len(style_grams)} style image(s)")
    total = sum(weights)
    content = {n: content_features[n].detach() for n, _ in config.content_layers}
    style = {
        n: sum(w / total * g[n].detach() for w, g in zip(weights, style_grams, strict=True))
        for n, _ in config.style_layers
    }
    return Targets(content=content, style=style)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ObjectiveWeights:
    """The weights of a batch's objective, one per image, as tensors made once before the loop.

    Batched jobs may weigh their terms and layers differently; they share the layer set, the
    normalization and the kind of TV. Made before the loop because a captured CUDA graph cannot
    copy host numbers to the device. Layers whose weight is zero for every image are left out.
    """

    content: tuple[tuple[str, Tensor], ...]  # (layer, (B,) weight times content_weight)
    style: tuple[tuple[str, Tensor], ...]  # (layer, (B,) weight times style_weight)
    tv: Tensor | None  # (B,); None when no image has TV
    normalization: Normalize
    tv_kind: TVKind
    tv_exponent: float


def objective_weights(
    configs: Sequence[LossConfig],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> ObjectiveWeights:
    """Per-image weights for a batch with one :class:`LossConfig` per image."""
    first = configs[0]
    shared = (first.normalization, first.tv_kind, first.tv_exponent)
    if any((c.normalization, c.tv_kind, c.tv_exponent) != shared for c in configs):
        raise ConfigError("jobs optimized as one batch must share normalization and TV kind")

    def column(values: list[float]) -> Tensor | None:
        return torch.tensor(values, dtype=dtype, device=device) if any(values) else None

    def layers(group: str, weight: str) -> tuple[tuple[str, Tensor], ...]:
        names = dict.fromkeys(n for c in configs for n, _ in getattr(c, group))
        columns = {
            n: column([getattr(c, weight) * dict(getattr(c, group)).get(n, 0.0) for c in configs])
            for n in names
        }
        return tuple((n, w) for n, w in columns.items() if w is not None)

    return ObjectiveWeights(
        content=layers("content_layers", "content_weight"),
        style=layers("style_layers", "style_weight"),
        tv=column([c.tv_weight for c in configs]),
        normalization=first.normalization,
        tv_kind=first.tv_kind,
        tv_exponent=first.tv_exponent,
    )


def weighted_terms(
    image: Tensor,
    features: Mapping[str, Tensor],
    targets: Targets,
    weights: ObjectiveWeights,
) -> LossTerms:
    """The weighted Gatys terms of each image of a batch (B, 3, H, W): each field is (B,)."""
    grams = {name: gram(features[name]) for name, _ in weights.style}
    errors = {
        name: squared_error(features[name], targets.content[name]) for name, _ in weights.content
    }
    return terms_from_statistics(image, grams, errors, targets, weights)


def terms_from_statistics(
    image: Tensor,
    grams: Mapping[str, Tensor],
    errors: Mapping[str, Tensor],
    targets: Targets,
    weights: ObjectiveWeights,
) -> LossTerms:
    """The weighted terms (B,) from the image's per-layer statistics: Gram matrices (B, C, C)
    and summed squared content errors (B,). Both are sums over positions, which is what lets
    :mod:`nst_batch.engine.tiled` accumulate them tile by tile and still get the exact loss."""
    zero = image.new_zeros(image.shape[0], dtype=_wide(image).dtype)
    content, style, tv = zero, zero, zero
    for name, w in weights.content:
        error = errors[name]
        content = content + w * content_from_sum(
            error, targets.content[name], weights.normalization, targets.content_norms[name]
        )
    for name, w in weights.style:
        style = style + w * style_terms(grams[name], targets.style[name], weights.normalization)
    if weights.tv is not None:
        tv = weights.tv * tv_terms(image, weights.tv_kind, weights.tv_exponent)
    return LossTerms(content=content, style=style, tv=tv, total=content + style + tv)


def objective(
    image: Tensor,
    features: Mapping[str, Tensor],
    targets: Targets,
    config: LossConfig,
) -> LossTerms:
    """The weighted Gatys objective for an image (B, 3, H, W): scalars, summed over the batch."""
    weights = objective_weights([config] * image.shape[0], image.device, _wide(image).dtype)
    terms = weighted_terms(image, features, targets, weights)
    return LossTerms(
        content=terms.content.sum(),
        style=terms.style.sum(),
        tv=terms.tv.sum(),
        total=terms.total.sum(),
    )


def stack_targets(targets: Sequence[Targets]) -> Targets:
    """Targets of single jobs (batch 1 each) as one batch, in order."""
    if len(targets) == 1:  # no copy: a print-size image's content maps are hundreds of MB
        return targets[0]
    first = targets[0]
    return Targets(
        content={n: torch.cat([t.content[n] for t in targets]) for n in first.content},
        style={n: torch.cat([t.style[n] for t in targets]) for n in first.style},
    )
