"""The objective and its gradient evaluated tile by tile, exactly, in memory bounded by the tile.

Every term of the Gatys objective is a function of sums over positions: a Gram matrix is
``sum_p f_p f_p^T / N`` and a content error ``sum_p |F_p - P_p|^2``. So one evaluation runs in
two passes over overlapping tiles of the image (:func:`tile_grid`):

1. each tile's features without autograd; the Gram matrices and content errors of the tile's
   *interior* are added up, giving the whole image's statistics, hence its loss, and the loss's
   gradient with respect to each statistic (``dL/dG``, ``dL/dE``: small tensors);
2. each tile again, with autograd: the scalar ``sum_l <dL/dG_l, G_l(tile)> + dL/dE_l E_l(tile)``
   is backpropagated to the tile's pixels and added into the image's gradient. By the chain rule
   the sum over tiles is the gradient of the untiled loss.

A tile is read with a halo of at least the receptive-field radius of the deepest layer used
(:func:`halo`: 70 px for relu5_1, rounded up to the pooling stride: 80), and tiles start on
multiples of that stride, so every interior feature sees exactly the pixels (and the same
pooling windows, and the same zero padding at the image's own border) it sees untiled: the
interior features *are* the untiled ones, up to the order of floating-point sums. Total
variation needs no network; it and its gradient are taken band by band of rows
(:func:`banded_tv`), since autograd over the whole image would hold several image-sized
temporaries at once. Peak memory is the activations of one tile plus the image-sized tensors,
whatever the image's size; the price is a second forward per tile and the halos' recompute
(``benchmarks/memory.py``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from nst_batch.engine.losses import (
    LossTerms,
    ObjectiveWeights,
    Targets,
    gram,
    squared_error,
    terms_from_statistics,
)
from nst_batch.engine.tv import tv_band
from nst_batch.engine.vgg import LAYER_INDEX, LAYERS, layer_spec

Features = Callable[[Tensor], Mapping[str, Tensor]]


def stride(layers: Sequence[str]) -> int:
    """The downsampling of the deepest of ``layers``: tiles start on multiples of it, so that
    every pooling window of a tile is one of the whole image's."""
    return max(layer_spec(n).scale for n in layers)


def halo(layers: Sequence[str]) -> int:
    """Pixels of context a tile needs on each side so that its interior features are exact:
    the receptive-field radius of the deepest layer, rounded up to :func:`stride`.

    A 3x3 convolution at downsampling ``s`` widens the field by ``s`` pixels on each side and a
    2x2 pooling only groups a cell with its neighbour, so a feature of the cell
    ``[s p, s p + s)`` depends on the pixels within ``sum(s of the convs before it)`` of that
    cell (70 for relu5_1, whose field is 156 = 16 + 2 * 70 px)."""
    deepest = max(LAYER_INDEX[n] for n in layers)
    radius = sum(spec.scale for spec in LAYERS[: deepest + 1] if spec.kind == "conv")
    step = stride(layers)
    return math.ceil(radius / step) * step


@dataclass(frozen=True)
class Tile:
    """A tile's interior (the pixels it is responsible for) and the crop read around it."""

    top: int
    bottom: int
    left: int
    right: int
    crop_top: int
    crop_bottom: int
    crop_left: int
    crop_right: int

    def crop(self, image: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, h, w), a view
        return image[..., self.crop_top : self.crop_bottom, self.crop_left : self.crop_right]

    def cells(self, scale: int, full: tuple[int, int]) -> tuple[slice, slice]:
        """The interior's cells in the image's feature map at downsampling ``scale``; ``full``
        is the image's (H, W), whose last row and column of cells a pooling may drop (floor),
        as it does untiled."""
        h, w = full
        rows = slice(self.top // scale, min(self.bottom, h - h % scale) // scale)
        cols = slice(self.left // scale, min(self.right, w - w % scale) // scale)
        return rows, cols

    def interior(self, features: Tensor, scale: int, full: tuple[int, int]) -> Tensor:
        """The interior's part of this tile's feature map (B, C, h, w) at ``scale``."""
        rows, cols = self.cells(scale, full)
        top, left = self.crop_top // scale, self.crop_left // scale
        return features[
            ..., rows.start - top : rows.stop - top, cols.start - left : cols.stop - left
        ]


def _spans(length: int, tile: int, step: int, margin: int) -> list[tuple[int, int, int, int]]:
    """(start, end, crop start, crop end) along one axis: interiors of about ``tile`` pixels
    starting on multiples of ``step``, crops ``margin`` wider on each side within the image."""
    tile = max(step, tile - tile % step)
    n = math.ceil(length / tile)
    # Even interiors (rounded to the step) rather than full tiles and a sliver at the end.
    cuts = [0] + [min(length, round(length * k / n / step) * step) for k in range(1, n)] + [length]
    return [
        (a, b, max(0, a - margin), min(length, b + margin))
        for a, b in itertools.pairwise(cuts)
        if b > a
    ]


def tile_grid(height: int, width: int, tile: int, layers: Sequence[str]) -> list[Tile]:
    """The tiles covering a (height, width) image, interiors about ``tile`` pixels square."""
    step, margin = stride(layers), halo(layers)
    return [
        Tile(t, b, left, r, ct, cb, cl, cr)
        for t, b, ct, cb in _spans(height, tile, step, margin)
        for left, r, cl, cr in _spans(width, tile, step, margin)
    ]


def _interior_gram(features: Tensor, name: str, tile: Tile, full: tuple[int, int]) -> Tensor:
    """The tile interior's share of the image's Gram matrix at layer ``name``: (B, C, C)."""
    scale = layer_spec(name).scale
    f = tile.interior(features, scale, full)  # (B, C, h, w)
    positions = (full[0] // scale) * (full[1] // scale)
    # gram() divides by the tile's positions; the image's Gram by all of them.
    return gram(f) * (f.shape[-2] * f.shape[-1] / positions)


@torch.no_grad()
def tiled_features(
    features: Features, image: Tensor, grams_of: Sequence[str], maps_of: Sequence[str], tile: int
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The Gram matrices (B, C, C) of the layers ``grams_of`` and the whole feature maps
    (B, C, H / s, W / s) of ``maps_of`` for ``image`` (B, 3, H, W), one tile at a time: the
    targets of an image too large for one forward pass. Equal to the untiled ones."""
    full = (image.shape[-2], image.shape[-1])
    grams: dict[str, Tensor] = {}
    maps: dict[str, Tensor] = {}
    for t in tile_grid(*full, tile, [*grams_of, *maps_of]):
        out = features(t.crop(image))
        for name in grams_of:
            g = _interior_gram(out[name], name, t, full)
            grams[name] = grams[name] + g if name in grams else g
        for name in maps_of:
            scale = layer_spec(name).scale
            part = t.interior(out[name], scale, full)
            if name not in maps:
                b, c = part.shape[:2]
                shape = (b, c, full[0] // scale, full[1] // scale)
                maps[name] = part.new_empty(shape)
            rows, cols = t.cells(scale, full)
            maps[name][..., rows, cols] = part
    return grams, maps


def banded_tv(x: Tensor, weights: ObjectiveWeights, rows: int, gradient: Tensor) -> Tensor:
    """The weighted total variation (B,) of ``x`` (B, C, H, W), ``rows`` rows at a time; its
    gradient is added into ``gradient`` (B, C, H, W). Exact: each band reads one row of context
    below it (:func:`~nst_batch.engine.tv.tv_band`)."""
    total = x.new_zeros(x.shape[0])
    if weights.tv is None:
        return total
    height = x.shape[-2]
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        with torch.enable_grad():
            band = x[..., top : bottom + 1, :].clone().requires_grad_(True)
            value = weights.tv * tv_band(
                band, bottom - top, height, weights.tv_kind, weights.tv_exponent
            )
            (g,) = torch.autograd.grad(value.sum(), band)
        gradient[..., top : bottom + 1, :].add_(g)
        total += value.detach()
    return total


@dataclass(frozen=True)
class _Statistics:
    """A tile's (or the image's) Gram matrices (B, C, C), normalised by the image's positions,
    and summed squared content errors (B,)."""

    grams: dict[str, Tensor]
    errors: dict[str, Tensor]


class TiledObjective:
    """``x -> (terms, gradient)`` of the objective for (B, 3, H, W) images, tile by tile.

    ``features`` is the (differentiable) feature stack, ``targets`` and ``weights`` those of the
    untiled objective; ``tile`` the interior edge in pixels. The result equals
    ``weighted_terms(x, features(x), targets, weights)`` and its gradient up to rounding.
    """

    def __init__(
        self, features: Features, targets: Targets, weights: ObjectiveWeights, tile: int
    ) -> None:
        self.features, self.targets, self.weights, self.tile = features, targets, weights, tile
        self.style = [n for n, _ in weights.style]
        self.content = [n for n, _ in weights.content]
        self.layers = self.style + self.content

    def tiles(self, x: Tensor) -> list[Tile]:
        if not self.layers:
            return []
        return tile_grid(x.shape[-2], x.shape[-1], self.tile, self.layers)

    def _statistics(self, crop: Tensor, tile: Tile, full: tuple[int, int]) -> _Statistics:
        """One tile's share of the image's statistics from its crop (differentiable if the
        crop is); ``full`` is the image's (H, W)."""
        out = self.features(crop)
        grams, errors = {}, {}
        for name in self.style:
            grams[name] = _interior_gram(out[name], name, tile, full)
        for name in self.content:
            scale = layer_spec(name).scale
            rows, cols = tile.cells(scale, full)
            target = self.targets.content[name][..., rows, cols]
            errors[name] = squared_error(tile.interior(out[name], scale, full), target)  # (B,)
        return _Statistics(grams, errors)

    def __call__(self, x: Tensor) -> tuple[LossTerms, Tensor]:
        x = x.detach()
        full = (x.shape[-2], x.shape[-1])
        tiles = self.tiles(x)
        # Pass 1: the image's statistics, summed over the tiles' interiors (as they come: a
        # print-size image has hundreds of tiles, each with megabytes of Gram matrices).
        with torch.no_grad():
            stats = _Statistics({}, {})  # no network layer is weighted: the TV alone
            if tiles:
                stats = self._statistics(tiles[0].crop(x), tiles[0], full)
            for t in tiles[1:]:
                part = self._statistics(t.crop(x), t, full)
                for name in self.style:
                    stats.grams[name].add_(part.grams[name])
                for name in self.content:
                    stats.errors[name].add_(part.errors[name])
                del part
                return_freed_pages(x.device)
        # The loss from them, and its gradient with respect to each statistic.
        with torch.enable_grad():
            leaves = [*stats.grams.values(), *stats.errors.values()]
            for t in leaves:
                t.requires_grad_(True)
            no_tv = dataclasses.replace(self.weights, tv=None)
            terms = terms_from_statistics(x, stats.grams, stats.errors, self.targets, no_tv)
            grads = (
                torch.autograd.grad(terms.total.sum(), leaves, allow_unused=True) if leaves else ()
            )
        d = _Statistics(
            dict(zip(stats.grams, grads[: len(self.style)], strict=True)),
            dict(zip(stats.errors, grads[len(self.style) :], strict=True)),
        )
        # The total variation straight to the pixels, in bands of about a tile's pixels.
        gradient = torch.zeros_like(x)
        rows = max(8, self.tile * self.tile // x.shape[-1])
        tv = banded_tv(x, self.weights, rows, gradient)
        terms = LossTerms(terms.content, terms.style, tv, terms.total + tv)
        # Pass 2: each tile's part of the gradient, by the chain rule through its statistics.
        for tile in tiles:
            with torch.enable_grad():
                crop = tile.crop(x).clone().requires_grad_(True)
                part = self._statistics(crop, tile, full)
                products = [
                    (d.grams[n] * part.grams[n]).sum() for n in self.style if d.grams[n] is not None
                ]
                products += [
                    (d.errors[n] * part.errors[n]).sum()
                    for n in self.content
                    if d.errors[n] is not None
                ]
                if not products:
                    continue  # no weighted term depends on the network's features
                (g,) = torch.autograd.grad(torch.stack(products).sum(), crop)
            tile.crop(gradient).add_(g)
            del part, products, g, crop
            return_freed_pages(x.device)
        return _detached(terms), gradient


def return_freed_pages(device: torch.device) -> None:
    """Give the C heap's free pages back to the system after a tile (CPU, glibc).

    Tiles of different shapes (the grid's edges) leave glibc's heap fragmented: freed blocks stay
    resident and the next tile's differently sized ones are placed beside them, so a tiled job's
    resident set grew tile after tile. Measured at 874x1024 (Adam, tiles of 256, bf16, 2 steps):
    a peak of 0.82 GB above the process's start with glibc's defaults, 0.59 GB when large blocks
    are returned at once (``MALLOC_MMAP_THRESHOLD_=1048576``). ``malloc_trim`` does that after
    each tile without changing how anything else allocates."""
    trim = _malloc_trim()
    if device.type == "cpu" and trim is not None:
        trim(0)


@functools.cache  # the C library's function, looked up once
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:  # no C library by that name (not Linux)
        return None


def _detached(terms: LossTerms) -> LossTerms:
    return LossTerms(
        content=terms.content.detach(),
        style=terms.style.detach(),
        tv=terms.tv.detach(),
        total=terms.total.detach(),
    )
