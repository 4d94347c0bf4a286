"""The temporal term of video stylization (Ruder, Dosovitskiy and Brox, GCPR 2016), pure.

A frame after the first is pulled towards the previous stylized frame warped into it by optical
flow, on the pixels where that warp can be trusted (the flow's forward-backward consistency
check, :mod:`nst_batch.video.flow`). The term is a plain mean squared difference on the [0, 1]
pixel scale, so its weight does not depend on the frame size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Temporal:
    """What ties one video frame to the previous one: the previous stylized frame warped into
    this frame, where the warp is trusted, the term's weight and the optimization's start.

    The tensors are at the frame's (final) size; the term applies at the pyramid's final level.
    """

    warped: Tensor  # (1, 3, H, W) in [0, 1]: the previous stylized frame, warped
    mask: Tensor  # (1, 1, H, W) in [0, 1]: 1 where forward and backward flows agree
    weight: float  # multiplies temporal_terms in the objective
    init: Tensor | None = None  # (1, 3, H, W): start here (warped, holes from the content)


def temporal_terms(image: Tensor, warped: Tensor, mask: Tensor) -> Tensor:
    """Mean squared difference of each image (B, C, H, W) to ``warped`` (B or 1, C, H, W) over
    the pixels of ``mask`` (B or 1, 1, H, W), per image: (B,).

    As in Ruder et al. (eq. 7) the sum of squared differences on the masked pixels is divided by
    the number of all values (C H W), not of the masked ones: a frame that is mostly occluded
    then weighs less, and the term stays smooth when the mask is nearly empty.
    """
    diff = (image.float() - warped.float()).pow(2) * mask.float()  # (B, C, H, W)
    return diff.mean(dim=(1, 2, 3))


def temporal_loss(image: Tensor, warped: Tensor, mask: Tensor) -> Tensor:
    """:func:`temporal_terms` summed over the batch."""
    return temporal_terms(image, warped, mask).sum()


def masked_fill(warped: Tensor, fill: Tensor, mask: Tensor) -> Tensor:
    """``warped`` where ``mask`` is 1, ``fill`` elsewhere: the start of a frame, with the pixels
    the warp cannot give (disoccluded, motion boundaries) from the content. (1, 3, H, W)."""
    return torch.lerp(fill, warped, mask)
