"""Stylization on tensors: the pyramid of optimizations, no files and no ONNX.

:func:`stylize_batch_tensors` takes decoded content and style images (all on one device), the
configs and a loaded model, computes the targets once per pyramid level and runs the engine's
optimization loop; the job layer (:mod:`nst_batch.jobs`) reads inputs and writes results.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from nst_batch.color import preserve_colors
from nst_batch.config import StylizeConfig, batch_key
from nst_batch.engine.graphs import features_at, precision_context, resolve_precision
from nst_batch.engine.losses import (
    LossTerms,
    Targets,
    blend_targets,
    compute_targets,
    objective_weights,
    stack_targets,
    weighted_terms,
)
from nst_batch.engine.memory import MemoryPlan, budget_bytes, plan
from nst_batch.engine.optimize import OptimConfig, OptimizeResult, Progress, optimize
from nst_batch.engine.temporal import Temporal, temporal_terms
from nst_batch.engine.tiled import TiledObjective, tiled_features
from nst_batch.engine.vgg import VGG19Features
from nst_batch.errors import ConfigError
from nst_batch.images import open_rgb, resized_shape, to_tensor

# With a time budget (max_seconds) each coarser pyramid level runs at least this many steps (or
# all its steps when it has fewer) before its share of the budget can stop it: a level of one or
# two L-BFGS steps is wasted time (its upsampled result is barely a start). The final level gets
# whatever time is left.
MIN_LEVEL_STEPS = 20


def initial_image(init: str, content: Tensor, seed: int, max_pixels: int | None = None) -> Tensor:
    """The optimization's starting point, shaped like ``content`` (1, 3, H, W)."""
    if init == "content":
        return content.clone()
    if init == "noise":
        generator = torch.Generator().manual_seed(seed)  # local: no global RNG state touched
        return torch.rand(content.shape, generator=generator).to(content)
    h, w = content.shape[-2:]
    img = open_rgb(Path(init), max_pixels).resize((w, h))
    return to_tensor(img).to(content)


def resize_to(image: Tensor, long_edge: int) -> Tensor:
    """Resize (B, 3, H, W) so its long edge is ``long_edge``, antialiased."""
    h, w = image.shape[-2:]
    new_w, new_h = resized_shape((w, h), long_edge)
    if (new_h, new_w) == (h, w):
        return image
    return F.interpolate(image, size=(new_h, new_w), mode="bicubic", antialias=True).clamp(0, 1)


def stylize_tensors(
    content: Tensor,
    styles: Tensor | Sequence[Tensor],
    config: StylizeConfig,
    model: VGG19Features,
    progress: Callable[[Progress], None] | None = None,
    target_model: Callable[[Tensor], dict[str, Tensor]] | None = None,
    temporal: Temporal | None = None,
) -> OptimizeResult:
    """Optimize an image shaped like ``content`` (1, 3, H, W) towards the styles' Gram statistics.

    ``content`` is at the output size; each style image (1, 3, h, w) at any size is resized to
    ``style_scale`` times the output's long edge. With several scales the image is optimized at
    each size of :meth:`StylizeConfig.pyramid` in turn, the result of one upsampled as the start
    of the next, with targets taken anew at every size. Steps in the reported progress count
    across all scales. ``target_model`` computes the targets (forward only) when given, e.g.
    the ONNX Runtime copy of ``model``; the optimization always differentiates ``model``.
    ``temporal`` (a video frame after the first) adds its term at the final level and gives its
    start (see :func:`stylize_batch_tensors`).
    """
    styles = [styles] if isinstance(styles, Tensor) else list(styles)
    return stylize_batch_tensors(
        [content], [styles], [config], model, progress, target_model, temporal=temporal
    )


def stylize_batch_tensors(
    contents: Sequence[Tensor],
    styles: Sequence[Sequence[Tensor]],
    configs: Sequence[StylizeConfig],
    model: VGG19Features,
    progress: Callable[[Progress], None] | None = None,
    target_model: Callable[[Tensor], dict[str, Tensor]] | None = None,
    cancel_check: Callable[[], None] | None = None,
    temporal: Temporal | None = None,
) -> OptimizeResult:
    """:func:`stylize_tensors` for several jobs optimized as one (B, 3, H, W) batch.

    Each job has its content (1, 3, H, W) (all the same shape), its style images and its config
    (all with the same :func:`batch_key`); targets and weights are per job, and each job's path
    is the one it takes alone. The result's image is (B, 3, H, W), its ``losses`` per job.
    ``cancel_check`` runs before each level's targets and each step (see ``optimize``).

    ``temporal`` (one job: a video frame after the first) adds ``weight * temporal_terms`` to
    each image's total at the final level (only to ``total``: the reported content, style and
    tv terms stay the three of the objective) and starts the final level from its ``init``
    when the pyramid has one level. That level is then evaluated untiled (autograd): the
    temporal term has no tiled gradient.
    """
    keys = {batch_key(c) for c in configs}
    shapes = {tuple(c.shape[-2:]) for c in contents}
    if len(keys) > 1 or len(shapes) > 1:
        raise ConfigError("jobs batched together need the same size, layers and optimizer")
    device = next(model.parameters()).device
    content = torch.cat([c.to(device) for c in contents])  # (B, 3, H, W)
    features = target_model or model
    pyramid = _Pyramid(configs, model, features, styles, content.dtype, progress, cancel_check)
    if temporal is not None:  # on the model's device once, not at every evaluation
        pyramid.temporal = dataclasses.replace(
            temporal,
            warped=temporal.warped.to(content),
            mask=temporal.mask.to(content),
        )
    history: list[Progress] = []
    failures = [""] * len(configs)  # per job: why its optimization failed, at the first bad level
    graphs: list[str] = []  # each level's CUDA-graph status
    image: Tensor | None = None
    result: OptimizeResult | None = None
    for i, long_edge in enumerate(pyramid.edges):
        result = pyramid.level(i, resize_to(content, long_edge), image)
        history += result.history
        graphs.append(result.graphs)
        where = f"at {long_edge} px: " if len(pyramid.edges) > 1 else ""
        level = result.failures or ("",) * len(configs)  # empty when no step ran
        failures = [old or (new and where + new) for old, new in zip(failures, level, strict=True)]
        image = result.image
        # A coarse level that used up its share of the time budget hands over to the next
        # (which gets what is left); only Ctrl-C ends the pyramid early.
        if result.stop_reason == "interrupted":
            break
    assert result is not None and image is not None
    if image.shape[-2:] != content.shape[-2:]:  # stopped at a coarse scale
        image = F.interpolate(image, size=content.shape[-2:], mode="bicubic").clamp(0, 1)
    image = torch.cat(
        [
            preserve_colors(image[j : j + 1], content[j : j + 1])
            if c.preserve_colors
            else image[j : j + 1]
            for j, c in enumerate(configs)
        ]
    )
    return dataclasses.replace(
        result,
        image=image,
        steps=len(history),
        elapsed=time.perf_counter() - pyramid.start,
        history=history,
        failures=tuple(failures) if result.failures else (),
        # a fallback at any level is what the record must say
        graphs=next((g for g in graphs if g.startswith("fallback")), result.graphs),
    )


class _Pyramid:
    """What the levels of one batch's pyramid share: the configs, models, weights, the step
    counts and the time budget's shares."""

    def __init__(
        self,
        configs: Sequence[StylizeConfig],
        model: VGG19Features,
        features: Callable[[Tensor], dict[str, Tensor]],
        styles: Sequence[Sequence[Tensor]],
        dtype: torch.dtype,
        progress: Callable[[Progress], None] | None,
        cancel_check: Callable[[], None] | None,
    ) -> None:
        self.configs, self.config = configs, configs[0]  # the second: what all jobs share
        self.features, self.styles = features, styles
        self.progress, self.cancel_check = progress, cancel_check
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(self.config.model.precision, self.device)
        self.differentiable = features_at(model, self.precision)
        self.edges = self.config.pyramid()
        n = len(self.edges)
        self.steps = [self.config.steps_at(i, n) for i in range(n)]
        # Time budget shares follow each scale's cost (pixels x steps).
        self.costs = [s * s * k for s, k in zip(self.edges, self.steps, strict=True)]
        self.loss_weights = objective_weights([c.loss for c in configs], self.device, dtype)
        self.budget = budget_bytes(self.config.memory, self.device)  # bytes, for every level
        self.start = time.perf_counter()
        self.temporal: Temporal | None = None  # a video frame's tie to the previous one

    def level(self, i: int, content: Tensor, previous: Tensor | None) -> OptimizeResult:
        """Optimize at level ``i``: content (B, 3, h, w) at its size, starting from the
        previous level's image upsampled (or each job's init); steps in the result's history
        count across the pyramid."""
        if self.cancel_check is not None:
            self.cancel_check()
        memory = self._plan(i, content)
        # In the loop's precision context: with "fp32" on CUDA, cuDNN's default TF32 is off for
        # the targets too.
        with torch.no_grad(), precision_context(self.precision, self.device):
            targets = stack_targets(
                [
                    self._targets(content[j : j + 1], self.styles[j], c, self.edges[i], memory.tile)
                    for j, c in enumerate(self.configs)
                ]
            )

        final = i == len(self.edges) - 1
        temporal = self.temporal if final else None

        def loss_fn(x: Tensor) -> LossTerms:
            terms = weighted_terms(x, self.differentiable(x), targets, self.loss_weights)
            if temporal is None:
                return terms
            # Added to the total only: the three reported terms stay the objective's.
            extra = temporal.weight * temporal_terms(x, temporal.warped, temporal.mask)  # (B,)
            return dataclasses.replace(terms, total=terms.total + extra.to(terms.total))

        gradient = None
        if memory.tile is not None and temporal is None:
            gradient = TiledObjective(self.differentiable, targets, self.loss_weights, memory.tile)
        if temporal is not None and temporal.init is not None and previous is None:
            init = temporal.init.to(content)
        elif previous is None:
            init = torch.cat(
                [
                    initial_image(c.init, content[j : j + 1], c.seed, c.max_pixels)
                    for j, c in enumerate(self.configs)
                ]
            )
        else:
            init = F.interpolate(previous, size=content.shape[-2:], mode="bicubic")
        level_start = time.perf_counter()
        offset = sum(self.steps[:i])  # planned steps, so a level's numbers never shift

        def globally(p: Progress) -> Progress:
            # Steps and seconds count across the whole pyramid.
            elapsed = p.elapsed + (level_start - self.start)
            total = sum(self.steps)
            return dataclasses.replace(
                p, step=offset + p.step, total=total, elapsed=elapsed, scale=i
            )

        def report(p: Progress) -> None:
            if self.progress is not None:
                self.progress(globally(p))

        with precision_context(self.precision, self.device):
            result = optimize(
                init,
                loss_fn,
                self._optim(i, memory),
                report,
                graphs=self.config.model.cuda_graphs,
                cancel_check=self.cancel_check,
                min_steps=0 if final else min(MIN_LEVEL_STEPS, self.steps[i]),
                gradient=gradient,
            )
        history = [dataclasses.replace(globally(p), image=None) for p in result.history]
        return dataclasses.replace(result, history=history, memory=memory)

    def _plan(self, i: int, content: Tensor) -> MemoryPlan:
        """Level ``i``'s way of fitting the memory budget: tiles, history size, optimizer."""
        optim = self.config.optim
        return plan(
            self.config.memory,
            self.config.loss.layers,
            (content.shape[0], content.shape[-2], content.shape[-1]),
            self.precision,
            optim.optimizer,
            optim.history_size,
            self.budget,
            tuple(n for n, _ in self.config.loss.content_layers),
        )

    def _targets(
        self,
        content: Tensor,
        styles: Sequence[Tensor],
        config: StylizeConfig,
        long_edge: int,
        tile: int | None,
    ) -> Targets:
        """One job's targets at one pyramid level: content (1, 3, H, W) already at that
        level; computed tile by tile (with the differentiable stack's weights) when the level
        is tiled."""
        style_edge = config.style_edge(long_edge)
        styles = [resize_to(s.to(self.device), style_edge) for s in styles]
        if tile is None:
            return compute_targets(
                self.features(content),
                [self.features(s) for s in styles],
                config.loss,
                config.style_blend,
            )
        style_layers = [n for n, _ in config.loss.style_layers]
        content_layers = [n for n, _ in config.loss.content_layers]
        _, maps = tiled_features(self.differentiable, content, [], content_layers, tile)
        grams = [tiled_features(self.differentiable, s, style_layers, [], tile)[0] for s in styles]
        return blend_targets(maps, grams, config.loss, config.style_blend)

    def _optim(self, i: int, memory: MemoryPlan) -> OptimConfig:
        """Level ``i``'s optimizer settings: its steps, its share of the time left, and the
        optimizer that fits the memory budget."""
        optim = self.config.optim
        if memory.optimizer != optim.optimizer:  # Adam's own step size, not L-BFGS's
            optim = dataclasses.replace(optim, optimizer=memory.optimizer, lr=None)
        elif memory.optimizer == "lbfgs":
            optim = dataclasses.replace(optim, history_size=memory.history_size)
        if optim.max_seconds is not None:
            # Each level's share of the time left follows its cost (pixels x steps); a coarser
            # level still runs MIN_LEVEL_STEPS steps when its share runs out sooner.
            left = optim.max_seconds - (time.perf_counter() - self.start)
            share = self.costs[i] / sum(self.costs[i:])
            optim = dataclasses.replace(optim, max_seconds=max(left * share, 1e-3))
        return dataclasses.replace(optim, steps=self.steps[i])
