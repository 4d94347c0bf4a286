"""Optical flow between video frames, warping by it, and where a warp can be trusted.

Flow is OpenCV's DIS (dense inverse search, Kroeger et al. 2016: ``cv2.DISOpticalFlow_create``),
fast on a CPU. The reliability mask is the forward-backward consistency check of Ruder,
Dosovitskiy and Brox (GCPR 2016, Sec. 3.2, as in manuelruder/artistic-videos): a pixel of frame
t is trusted when following the flow back to t-1 and forward again lands where it started, it is
not on a motion boundary, and the flow does not leave the frame.

Conventions: a flow is (H, W, 2) float32 in pixels, (dx, dy) per pixel of the frame it starts
from; ``flow(a, b)[y, x]`` says where pixel (x, y) of ``a`` is in ``b``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nst_batch.errors import ConfigError

FLOW_METHOD = "opencv-dis-medium"  # what sidecars record
Resample = Literal["bilinear", "bicubic", "nearest"]

# Ruder et al.'s thresholds (their consistencyChecker): disocclusion where the round trip misses
# by more than 1% of the flows' squared lengths plus half a pixel squared; motion boundary where
# the flow's squared gradient exceeds 1% of its squared length plus 0.002.
ROUND_TRIP_RELATIVE = 0.01
ROUND_TRIP_PIXELS = 0.5
BOUNDARY_RELATIVE = 0.01
BOUNDARY_ABSOLUTE = 0.002


def _cv2():  # type: ignore[no-untyped-def]
    try:
        import cv2
    except ImportError:
        raise ConfigError("video needs OpenCV and PyAV: pip install 'nst-batch[video]'") from None
    return cv2


def gray(image: Tensor) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] -> (H, W) uint8 luminance, what DIS reads."""
    rgb = image[0].detach().float().cpu().clamp(0, 1)  # (3, H, W)
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]  # (H, W)
    return (luma * 255).round().to(torch.uint8).numpy()


def optical_flow(source: Tensor, target: Tensor) -> np.ndarray:
    """Dense flow from ``source`` to ``target`` (both (1, 3, H, W)): (H, W, 2) float32."""
    cv2 = _cv2()
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flow = dis.calc(gray(source), gray(target), None)  # (H, W, 2)
    return np.ascontiguousarray(flow, dtype=np.float32)


def _grid(flow: np.ndarray | Tensor, device: torch.device) -> Tensor:
    """Sampling positions x + flow(x) as grid_sample's normalised (1, H, W, 2) grid."""
    f = torch.as_tensor(flow, dtype=torch.float32, device=device)  # (H, W, 2)
    h, w = f.shape[:2]
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=device),
        torch.arange(w, dtype=torch.float32, device=device),
        indexing="ij",
    )
    x = (xs + f[..., 0]) * (2 / max(w - 1, 1)) - 1  # align_corners=True: -1 and 1 are centres
    y = (ys + f[..., 1]) * (2 / max(h - 1, 1)) - 1
    return torch.stack([x, y], dim=-1)[None]  # (1, H, W, 2)


def warp(image: Tensor, flow: np.ndarray | Tensor, mode: Resample = "bilinear") -> Tensor:
    """``image`` (B, C, H, W) sampled at x + flow(x), edges repeated: with ``flow`` from frame t
    to frame t-1 and ``image`` frame t-1, frame t-1 moved to where frame t is. Bicubic (may
    overshoot [0, 1] a little: clamp) keeps a stylized frame's brush strokes sharp where
    bilinear blurs them a little more at every frame of a clip."""
    grid = _grid(flow, image.device).to(image.dtype).expand(image.shape[0], -1, -1, -1)
    return F.grid_sample(image, grid, mode=mode, padding_mode="border", align_corners=True)


def inside(flow: np.ndarray) -> np.ndarray:
    """(H, W) bool: x + flow(x) lies within the frame."""
    h, w = flow.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    x, y = xs + flow[..., 0], ys + flow[..., 1]
    return (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)


def consistent(backward: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """Where a warp from frame t-1 into frame t can be trusted: (H, W) float32, 1 or 0.

    ``backward`` is the flow from t to t-1, ``forward`` from t-1 to t. A pixel is 0 when it is
    disoccluded (the round trip t -> t-1 -> t misses), on a motion boundary, or its flow leaves
    the frame.
    """
    # The forward flow read where each pixel of t lands in t-1: (H, W, 2).
    forward_back = warp(torch.from_numpy(forward).permute(2, 0, 1)[None], backward)
    returned = forward_back[0].permute(1, 2, 0).numpy()  # (H, W, 2)
    miss = np.sum((returned + backward) ** 2, axis=-1)
    lengths = np.sum(returned**2, axis=-1) + np.sum(backward**2, axis=-1)
    occluded = miss > ROUND_TRIP_RELATIVE * lengths + ROUND_TRIP_PIXELS
    du_y, du_x = np.gradient(backward[..., 0])
    dv_y, dv_x = np.gradient(backward[..., 1])
    gradient = du_x**2 + du_y**2 + dv_x**2 + dv_y**2
    boundary = gradient > BOUNDARY_RELATIVE * np.sum(backward**2, axis=-1) + BOUNDARY_ABSOLUTE
    return (~occluded & ~boundary & inside(backward)).astype(np.float32)


@dataclass(frozen=True)
class FrameFlow:
    """How frame t relates to frame t-1 of the input: the flow back (t to t-1) and the mask of
    the pixels whose warp is trusted."""

    backward: np.ndarray  # (H, W, 2): flow from t to t-1
    mask: np.ndarray  # (H, W) float32 in {0, 1}

    @property
    def mask_tensor(self) -> Tensor:
        return torch.from_numpy(self.mask)[None, None]  # (1, 1, H, W)

    @property
    def trusted(self) -> float:
        """Fraction of the frame whose warp is trusted."""
        return float(self.mask.mean())


def frame_flow(previous: Tensor, current: Tensor) -> FrameFlow:
    """The flows both ways between two input frames (1, 3, H, W) and their consistency."""
    if previous.shape != current.shape:
        raise ConfigError(
            f"frames of one clip need one size, not {tuple(previous.shape[-2:])} and "
            f"{tuple(current.shape[-2:])}"
        )
    backward = optical_flow(current, previous)
    forward = optical_flow(previous, current)
    return FrameFlow(backward, consistent(backward, forward))
