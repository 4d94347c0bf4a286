"""Feature-map pictures: what chosen VGG19 layers see in an image."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from nst_batch.engine.vgg import VGG19Features
from nst_batch.images import to_pil

LABEL_WIDTH = 72
GAP = 4


def feature_grid(
    image: Tensor, model: VGG19Features, layers: Sequence[str], channels: int = 8
) -> Image.Image:
    """One row per layer: the ``channels`` most active feature maps of ``image`` (1, 3, H, W).

    Each map is min-max normalised on its own and enlarged (nearest neighbour, so a layer's
    resolution stays visible) to the input's size; the input is shown first in the row.
    """
    with torch.no_grad():
        feats = model(image)
    h, w = image.shape[-2:]
    font = ImageFont.load_default(size=12)
    width = LABEL_WIDTH + (channels + 1) * (w + GAP)
    grid = Image.new("RGB", (width, len(layers) * (h + GAP) + GAP), "white")
    draw = ImageDraw.Draw(grid)
    source = to_pil(image)
    for row, name in enumerate(layers):
        maps = feats[name][0].float()  # (C, h', w')
        order = maps.mean(dim=(1, 2)).argsort(descending=True)[:channels]
        top = y = GAP + row * (h + GAP)
        draw.text((GAP, top + h // 2 - 6), name, fill="black", font=font)
        grid.paste(source, (LABEL_WIDTH, y))
        for col, c in enumerate(order.tolist(), start=1):
            tile = _normalise(maps[c])[None, None]  # (1, 1, h', w')
            tile = F.interpolate(tile, size=(h, w), mode="nearest")[0].expand(3, -1, -1)
            grid.paste(to_pil(tile), (LABEL_WIDTH + col * (w + GAP), y))
    return grid


def _normalise(x: Tensor) -> Tensor:
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
