"""What one stylization is asked to do: frozen configs, checked when built.

:class:`StylizeConfig` nests the engine's configs (:class:`~nst_batch.engine.model.ModelConfig`,
:class:`~nst_batch.engine.losses.LossConfig`, :class:`~nst_batch.engine.optimize.OptimConfig`);
:class:`OutputConfig` says what a job writes besides its image. Presets and the flat
``KEY=VALUE`` parameter table that build these live in :mod:`nst_batch.params`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import Field

from nst_batch.engine.losses import LossConfig
from nst_batch.engine.memory import MemoryConfig
from nst_batch.engine.model import ModelConfig
from nst_batch.engine.optimize import OptimConfig
from nst_batch.engine.vgg import LAYER_INDEX, LAYERS
from nst_batch.errors import ConfigError
from nst_batch.images import resized_shape
from nst_batch.validation import Note, check_fields, check_value

AUTO_SCALES_FROM = 384  # outputs at least this large are optimized coarse to fine by default
SMALLEST_SCALE = 128  # the coarsest scale's long edge is at least this
INIT_KEYWORDS = ("content", "noise")  # the init images that are not files
# What users of other tools call the init images (neural-style's -init random|image).
INIT_ALIASES = {"random": "noise", "image": "content"}


StyleScale = Annotated[float, Field(ge=0.05, le=8)]


def check_style_settings(style_scale: float, style_blend: tuple[float, ...] | None) -> None:
    check_value("style_scale", style_scale, StyleScale)
    check_style_blend(style_blend)


def check_style_blend(style_blend: tuple[float, ...] | None) -> None:
    if style_blend is None:
        return
    if not style_blend or min(style_blend) < 0:
        raise ConfigError(f"style_blend needs non-negative weights, not {style_blend}")
    if sum(style_blend) <= 0:
        raise ConfigError(f"style_blend {style_blend}: at least one weight must be positive")


def style_long_edge(style_scale: float, long_edge: int) -> int:
    """Long edge the style images are used at when the output's is ``long_edge``."""
    return max(16, round(style_scale * long_edge))


@dataclass(frozen=True)
class StylizeConfig:
    # long edge of the output, in pixels
    size: Annotated[int, Field(ge=16, le=8192), Note("pixels")] = 512
    init: str = "content"  # "content", "noise" or a path to an image
    seed: int = 0  # random seed (the noise init)
    preset: str = "default"  # the recipe these settings started from (for the record)
    style_blend: tuple[float, ...] | None = None  # one weight per style image; None = equal
    style_scale: StyleScale = 1.0  # style image long edge, relative to the output's (at each scale)
    preserve_colors: bool = False  # keep the output's luminance with the content's chroma
    # coarse-to-fine pyramid levels; None = auto (on from 384 px)
    scales: Annotated[int, Field(ge=1, le=6)] | None = None
    # iterations at each coarser scale; None = half of steps
    scale_steps: Annotated[int, Field(ge=1)] | None = None
    # refuse input images with more pixels (decompression bombs); None = Pillow's limit (89.5 MP)
    max_pixels: Annotated[int, Field(ge=1)] | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)

    def __post_init__(self) -> None:
        check_fields(self)  # types, ranges (Field), choices (Literal): ConfigError naming the field
        check_style_blend(self.style_blend)
        if not self.init.strip():
            raise ConfigError("init must be content, noise or an image path, not empty")
        if self.init in INIT_ALIASES:  # canonical name, so hashes and sidecars agree
            object.__setattr__(self, "init", INIT_ALIASES[self.init])

    def pyramid(self) -> tuple[int, ...]:
        """Long edge of each scale, coarse to fine, ending at ``size``."""
        if self.scales is None:
            n = 1
            if self.size >= AUTO_SCALES_FROM:
                while self.size // 2**n >= SMALLEST_SCALE:
                    n += 1
        else:
            n = self.scales
        return tuple(max(16, round(self.size / 2**k)) for k in reversed(range(n)))

    def style_edge(self, long_edge: int) -> int:
        """Long edge of the style images when the output's is ``long_edge``."""
        return style_long_edge(self.style_scale, long_edge)

    def steps_at(self, scale_index: int, n_scales: int) -> int:
        if scale_index == n_scales - 1:
            return self.optim.steps
        return self.scale_steps or max(1, self.optim.steps // 2)


@dataclass(frozen=True)
class OutputConfig:
    """What a job writes besides the image and its sidecar."""

    # also save the iterate every N steps as OUT.<step>.EXT; 0 = never
    save_every: Annotated[int, Field(ge=0), Note("(0 = off)")] = 0
    sheet: bool = False  # OUT.sheet.png (content | styles | result) and OUT.loss.png

    def __post_init__(self) -> None:
        check_fields(self)


def batch_key(config: StylizeConfig) -> tuple[Any, ...]:
    """Jobs whose configs share this key, with content images of the same shape at the output
    size, can be optimized as one batch: they differ only in weights, styles, init and colours."""
    loss = config.loss
    return (
        config.size,
        config.pyramid(),
        config.scale_steps,
        config.model,
        config.memory,
        dataclasses.replace(config.optim, sync_every=None),
        tuple(n for n, _ in loss.content_layers),
        tuple(n for n, _ in loss.style_layers),
        loss.normalization,
        loss.tv_kind,
        loss.tv_exponent,
    )


def check_fits(
    config: StylizeConfig, output: tuple[int, int], styles: Sequence[tuple[int, int]]
) -> None:
    """Refuse images whose short edge, at some pyramid level, is smaller than the deepest layer
    needs (each pooling halves it: relu5_1 needs 16 px), instead of failing inside the network."""
    deepest = max(config.loss.layers, key=lambda n: LAYER_INDEX[n])
    pools = sum(1 for spec in LAYERS[: LAYER_INDEX[deepest]] if spec.kind == "pool")
    need = 2**pools
    for edge in config.pyramid():
        w, h = resized_shape(output, edge)
        if min(w, h) < need:
            raise ConfigError(
                f"the output would be {w}x{h} px at the {edge} px scale; layer {deepest} needs "
                f"a short edge of at least {need} px: use a larger size, fewer scales or a less "
                "elongated content image"
            )
        style_edge = config.style_edge(edge)
        for w, h in styles:
            if min(resized_shape((w, h), style_edge)) < need:
                raise ConfigError(
                    f"a {w}x{h} style image is too elongated for a {style_edge} px style size "
                    f"(layer {deepest} needs a short edge of at least {need} px)"
                )
