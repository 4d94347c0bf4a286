"""Total variation: the smoothness term of the objective, whole or band by band of rows."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

TVKind = Literal["l2", "l1"]


def tv_terms(image: Tensor, kind: TVKind = "l2", exponent: float = 1.0) -> Tensor:
    """Total variation of each image of a batch (B, C, H, W) -> (B,).

    ``"l2"``: ``mean((dx^2 + dy^2) ** exponent)`` over the positions that have both neighbours (the
    Keras neural style recipe uses exponent 1.25). ``"l1"``: ``mean(|dx|) + mean(|dy|)``.
    """
    return tv_band(image, image.shape[-2], image.shape[-2], kind, exponent)


def tv_band(
    band: Tensor, rows: int, height: int, kind: TVKind = "l2", exponent: float = 1.0
) -> Tensor:
    """The share (B,) of the rows ``[0, rows)`` of ``band`` (B, C, h, W) in the total variation of
    the image, ``height`` rows high, that it is a horizontal band of; the band's rows after
    ``rows`` (at most one) are the context below it. The shares of bands that partition an
    image's rows add up to :func:`tv_terms` of it: every term is a sum over positions, which is
    what lets a print-size image's TV and its gradient be taken band by band."""
    dims = (1, 2, 3)
    channels, width = band.shape[-3], band.shape[-1]
    if kind == "l1":
        dx = (band[..., :rows, 1:] - band[..., :rows, :-1]).abs().sum(dim=dims)
        dy = (band[..., 1:, :] - band[..., :-1, :]).abs().sum(dim=dims)
        return dx / (channels * height * (width - 1)) + dy / (channels * (height - 1) * width)
    dx = band[..., :-1, 1:] - band[..., :-1, :-1]  # (B, C, h-1, W-1)
    dy = band[..., 1:, :-1] - band[..., :-1, :-1]
    energy = dx.pow(2) + dy.pow(2)
    if exponent != 1.0:
        # The epsilon keeps the gradient finite where the image is flat and exponent < 1.
        energy = (energy + 1e-8).pow(exponent)
    return energy.sum(dim=dims) / (channels * (height - 1) * (width - 1))


def tv_loss(image: Tensor, kind: TVKind = "l2", exponent: float = 1.0) -> Tensor:
    """:func:`tv_terms` summed over the batch."""
    return tv_terms(image, kind, exponent).sum()
