"""Colour preservation: the stylized luminance with the content's chroma."""

from __future__ import annotations

import torch
from torch import Tensor

# RGB -> YIQ (NTSC 1953). Linear and exactly invertible, so luminance and chroma separate cleanly.
_RGB_TO_YIQ = torch.tensor(
    [
        [0.299, 0.587, 0.114],
        [0.595716, -0.274453, -0.321263],
        [0.211456, -0.522591, 0.311135],
    ]
)


def rgb_to_yiq(image: Tensor) -> Tensor:
    """(B, 3, H, W) RGB -> (B, 3, H, W) YIQ."""
    return torch.einsum("ij,bjhw->bihw", _RGB_TO_YIQ.to(image), image)


def yiq_to_rgb(image: Tensor) -> Tensor:
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_RGB_TO_YIQ).to(image), image)


def preserve_colors(stylized: Tensor, content: Tensor) -> Tensor:
    """Luminance (Y) of ``stylized`` with the chroma (I, Q) of ``content``; both (B, 3, H, W).

    This is the "luminance-only" colour preservation of Gatys et al. (2016, "Preserving Color in
    Neural Artistic Style Transfer") applied after the optimization, like neural-style's
    ``-original_colors``. Clamped to [0, 1].
    """
    y = rgb_to_yiq(stylized)[:, :1]
    iq = rgb_to_yiq(content.to(stylized))[:, 1:]
    return yiq_to_rgb(torch.cat([y, iq], dim=1)).clamp(0, 1)
