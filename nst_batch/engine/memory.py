"""How much memory a stylization needs, and a plan that fits it into a budget.

The estimate is a function of the layer table, the image size, the batch, the precision and the
optimizer; ``benchmarks/memory.py`` measures it against real peaks and ``tests/test_memory.py``
holds it to within 25% at 256, 512 and 1024 px. It has three parts:

- image-sized float32 tensors of the loop: the pixels, their gradient, the best and the current
  iterate, the content, the gradient being made (``IMAGE_COPIES``);
- the optimizer's: L-BFGS keeps ``2 m + 3`` image-sized vectors (``m`` curvature pairs, the
  direction, the anchor and its gradient) and a few temporaries while it steps; Adam keeps two;
- the feature stack's activations kept for the backward pass, proportional to the pixels
  evaluated at once (the whole image, or one tile and its halo: :mod:`nst_batch.engine.tiled`);
- the content target maps, kept whole for the loop (relu4_2's: 8 values per pixel, more than
  the image itself).

:func:`plan` picks, in this order, the first that fits the budget: untiled; tiled, with the
largest tile that fits; tiled with a shorter L-BFGS history; Adam, with the largest tile that fits
it. It never picks something that does not fit: a budget too small even for Adam's state is a
:class:`ConfigError` that says how much is needed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import Field

from nst_batch.engine.tiled import tile_grid
from nst_batch.engine.vgg import LAYER_INDEX, LAYERS, layer_spec
from nst_batch.errors import ConfigError
from nst_batch.validation import check_fields

GB = 1e9
# Fitted to measured peaks on a CPU (benchmarks/results/memory-cpu.md: 256 to 1024 px, bf16 and
# fp32, tiled and untiled): what a job allocates besides the per-pixel parts below (the style
# image's targets, the libraries' workspaces).
FIXED = 0.2 * GB
# Image-sized float32 tensors the loop and the job hold besides the optimizer's, counted at the
# peak of a tiled evaluation: the pixels, their gradient, the best and the current iterate, the
# gradient being made, the content (the decoded one and the batch's), the upsampled start, the
# coarser level's result (a quarter), and a transient of keeping the best.
IMAGE_COPIES = 10
# L-BFGS: image-sized vectors besides the 2 m of the history (direction, anchor, its gradient,
# and the step's temporaries).
LBFGS_VECTORS = 7
ADAM_VECTORS = 4  # the two moments and the step's temporaries
# Bytes kept per activation element of the stack, relative to the element size: the outputs saved
# for backward, autocast's bf16 copies, pooling indices, the backward's transient gradients.
ACTIVATION_FACTOR = {"bf16": 3.0, "fp32": 1.7}
# The same for a tile's crop: lower, since the whole image's autograd graph is gone (the tiles'
# statistics are summed without it, and each crop's graph is freed before the next).
TILED_ACTIVATION_FACTOR = {"bf16": 2.1, "fp32": 1.2}
# Tile edges tried when tiling, largest first (interiors; each crop adds the halo on each side).
TILE_SIZES = (1536, 1024, 768, 512, 384, 256)
MIN_HISTORY = 5  # below this many curvature pairs L-BFGS is no better than Adam
# A history this long (or the one asked for, if shorter) is worth smaller tiles' slower steps.
GOOD_HISTORY = 10
# Kept free on top of the estimate when the budget is what the machine has free.
MARGIN = 0.15

OptimizerName = Literal["lbfgs", "adam"]


@dataclass(frozen=True)
class MemoryConfig:
    # budget for the job in GB; None: what the device has free (CPU: available RAM) less 15%
    max_memory: Annotated[float, Field(gt=0)] | None = None
    # tile interior edge in pixels; None: tile only when the untiled estimate exceeds the budget
    tile: Annotated[int, Field(ge=64)] | None = None

    def __post_init__(self) -> None:
        check_fields(self)  # ranges (Field): ConfigError naming the field


@dataclass(frozen=True)
class MemoryPlan:
    """How one optimization runs within its budget: the record a sidecar keeps."""

    tile: int | None  # tile interior edge; None: untiled
    optimizer: OptimizerName
    history_size: int  # L-BFGS pairs (0 for Adam)
    estimate_gb: float
    budget_gb: float

    def describe(self) -> str:
        tiles = f"tiles of {self.tile} px" if self.tile else "untiled"
        opt = f"L-BFGS, {self.history_size} pairs" if self.optimizer == "lbfgs" else "Adam"
        return f"{tiles}, {opt}: {self.estimate_gb:.2f} GB of {self.budget_gb:.2f} GB"


def activation_elements(layers: tuple[str, ...], pixels: int) -> float:
    """Activation elements of one image's forward pass up to the deepest of ``layers``: every
    conv, ReLU and pooling output, ``C / s^2`` per input pixel."""
    deepest = max(LAYER_INDEX[n] for n in layers)
    per_pixel = sum(spec.out_channels / spec.scale**2 for spec in LAYERS[: deepest + 1])
    return per_pixel * pixels


def estimate_bytes(
    layers: tuple[str, ...],
    height: int,
    width: int,
    batch: int = 1,
    precision: str = "fp32",
    optimizer: OptimizerName = "lbfgs",
    history_size: int = 100,
    tile: int | None = None,
    content_layers: tuple[str, ...] = (),
) -> float:
    """Bytes a (batch, 3, height, width) optimization allocates at its peak, beyond what the
    process holds before it starts (interpreter, libraries, the model's weights);
    ``content_layers`` are those of ``layers`` whose whole feature maps are targets."""
    image = 4.0 * batch * 3 * height * width  # one float32 image-sized tensor
    state = ((2 * history_size + LBFGS_VECTORS) if optimizer == "lbfgs" else ADAM_VECTORS) * image
    low = "bf16" if precision == "bf16" else "fp32"
    if tile is None:
        evaluated, factor = height * width, ACTIVATION_FACTOR[low]
    else:  # the largest crop (interior and halo) of the grid
        crops = tile_grid(height, width, tile, layers)
        evaluated = max((t.crop_bottom - t.crop_top) * (t.crop_right - t.crop_left) for t in crops)
        factor = TILED_ACTIVATION_FACTOR[low]
    size = 2 if precision == "bf16" else 4
    activations = factor * size * batch * activation_elements(layers, evaluated)
    maps = sum(
        size * batch * layer_spec(n).out_channels / layer_spec(n).scale ** 2 * height * width
        for n in content_layers
    )
    return FIXED + IMAGE_COPIES * image + state + activations + maps


def available_bytes(device: torch.device) -> float:
    """What the device has free: CUDA's free memory plus what this process's cache holds; on a
    CPU the kernel's MemAvailable (RAM that can be had without swapping)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return float(
            free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        )
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def held_bytes(device: torch.device) -> float:
    """What this process already holds on the device (CPU: its resident set)."""
    if device.type == "cuda":
        return float(torch.cuda.memory_allocated(device))
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) * 1024
    return 0.0


def budget_bytes(config: MemoryConfig, device: torch.device) -> float:
    """Bytes a job may allocate: ``max_memory`` is for the whole process (what it holds already
    counts against it); without it, what the device has free less :data:`MARGIN`."""
    if config.max_memory is not None:
        return config.max_memory * GB - held_bytes(device)
    return available_bytes(device) * (1 - MARGIN)


def plan(
    config: MemoryConfig,
    layers: tuple[str, ...],
    shape: tuple[int, int, int],  # (batch, height, width)
    precision: str,
    optimizer: OptimizerName,
    history_size: int,
    budget: float,
    content_layers: tuple[str, ...] = (),
) -> MemoryPlan:
    """The first that fits ``budget`` bytes of: untiled; the largest tile; the largest tile
    that keeps a useful L-BFGS history (:data:`GOOD_HISTORY`); the smallest tile with any
    history of at least :data:`MIN_HISTORY`; Adam, untiled or with the largest tile that fits."""
    b, h, w = shape

    def need(opt: OptimizerName, m: int, tile: int | None) -> float:
        return estimate_bytes(layers, h, w, b, precision, opt, m, tile, content_layers)

    def made(opt: OptimizerName, m: int, tile: int | None) -> MemoryPlan:
        return MemoryPlan(
            tile, opt, m if opt == "lbfgs" else 0, need(opt, m, tile) / GB, budget / GB
        )

    def longest_history(tile: int | None) -> int:
        """The most L-BFGS pairs (up to the asked-for number) that fit with this tile."""
        pair = need("lbfgs", 1, tile) - need("lbfgs", 0, tile)
        return min(history_size, int((budget - need("lbfgs", 0, tile)) // pair))

    tiles = (config.tile,) if config.tile else tuple(t for t in TILE_SIZES if t < max(h, w))
    # Untiled first (unless a tile was asked for), then the tiles, largest first.
    candidates: tuple[int | None, ...] = ((None,) if config.tile is None else ()) + tiles

    def first_fit(opt: OptimizerName, m: int) -> MemoryPlan | None:
        for tile in candidates:
            if need(opt, m, tile) <= budget:
                return made(opt, m, tile)
        return None

    if (found := first_fit(optimizer, history_size)) is not None:
        return found
    smallest = tiles[-1] if tiles else None
    if optimizer == "lbfgs":
        for tile in tiles:
            if longest_history(tile) >= min(history_size, GOOD_HISTORY):
                return made("lbfgs", longest_history(tile), tile)
        if longest_history(smallest) >= MIN_HISTORY:
            return made("lbfgs", longest_history(smallest), smallest)
    # Adam's state is small, so a larger tile (fewer halos to recompute) often fits it.
    if (found := first_fit("adam", 0)) is not None:
        return found
    raise ConfigError(
        f"a {w}x{h} image needs at least {need('adam', 0, smallest) / GB:.1f} GB (tiled, Adam) "
        f"but the budget leaves {budget / GB:.1f} GB for it; raise --max-memory or lower --size"
    )
