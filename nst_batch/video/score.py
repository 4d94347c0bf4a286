"""How coherent and how stylized a stylized clip is: ``nst-batch score-video``.

Temporal warping error (the measure of Ruder et al. 2016, Sec. 5.1, as a mean absolute
difference on the [0, 1] pixel scale)::

    E = mean over t > 1 of  sum_x c_t(x) |S_t(x) - warp(S_{t-1})(x)| / (3 sum_x c_t(x))

where the flow (t to t-1) and the mask ``c_t`` of pixels whose forward and backward flows agree
are those of the *input* clip (:func:`nst_batch.video.flow.frame_flow`), so a method is judged
on the motion that is really there, not on its own output's. The style and content distances
are :func:`nst_batch.metrics.score`'s, averaged over the frames.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from nst_batch.errors import VideoError
from nst_batch.images import to_tensor
from nst_batch.metrics import MetricsConfig, score
from nst_batch.pool import ModelPool
from nst_batch.video.flow import frame_flow, warp
from nst_batch.video.io import ClipRange, read_clip


@dataclass(frozen=True)
class VideoScores:
    warping_error: float  # mean |S_t - warp(S_{t-1})| on consistent pixels; nan for one frame
    style: float  # mean per-frame style distance; nan without style images
    content: float  # mean per-frame content distance
    frames: int
    per_frame_warping: tuple[float, ...] = ()  # frames 2.. (index t-1)


def warping_error(stylized: Sequence[Tensor], inputs: Sequence[Tensor]) -> list[float]:
    """Per frame t > 1: the masked mean absolute difference of stylized frame t to stylized
    frame t-1 warped by the input's flow. Frames (1, 3, H, W), the two lists of one size."""
    errors = []
    for t in range(1, len(stylized)):
        tie = frame_flow(inputs[t - 1], inputs[t])
        warped = warp(stylized[t - 1], tie.backward)  # (1, 3, H, W)
        mask = tie.mask_tensor  # (1, 1, H, W)
        covered = float(mask.sum()) * 3
        diff = float(((stylized[t] - warped).abs() * mask).sum())
        errors.append(diff / covered if covered else math.nan)
    return errors


def recorded_part(output: Path) -> tuple[ClipRange, list[Path]]:
    """The part of the input and the styles that ``nst-batch video`` recorded in OUT.json,
    or the whole input and no styles when there is no record."""
    try:
        record = json.loads(output.with_suffix(".json").read_text())
        part = record["input"]
        taken = ClipRange(part["start"], part["duration"], part["fps"])
        return taken, [Path(s) for s in record["styles"]]
    except (OSError, ValueError, KeyError, TypeError):
        return ClipRange(), []


def score_video(
    output: Path,
    source: Path,
    styles: Sequence[Path] = (),
    part: ClipRange | None = None,
    config: MetricsConfig | None = None,
    models: ModelPool | None = None,
) -> VideoScores:
    """Score a stylized clip ``output`` against the ``source`` clip it was made from (the same
    ``part`` of it). Each input frame is resized to its output frame's size."""
    config = config or MetricsConfig()
    outs = [to_tensor(f) for f in read_clip(Path(output), ClipRange(), None).frames]
    size = (outs[0].shape[-1], outs[0].shape[-2])
    ins = read_clip(Path(source), part or ClipRange(), None).frames
    if len(ins) != len(outs):
        raise VideoError(
            f"{output} has {len(outs)} frames and {source} {len(ins)} (in the part taken): "
            "score a clip against the input it was made from"
        )
    inputs = [to_tensor(f.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)) for f in ins]
    errors = warping_error(outs, inputs)
    models = models or ModelPool()
    styles_, contents = [], []
    for out, content in zip(outs, inputs, strict=True):
        with torch.no_grad():
            if styles:
                s = score(out, content, list(styles), config, models)
                styles_.append(s.style)
                contents.append(s.content)
            else:
                contents.append(score(out, content, [content], config, models).content)
    finite = [e for e in errors if not math.isnan(e)]
    return VideoScores(
        warping_error=sum(finite) / len(finite) if finite else math.nan,
        style=sum(styles_) / len(styles_) if styles_ else math.nan,
        content=sum(contents) / len(contents),
        frames=len(outs),
        per_frame_warping=tuple(errors),
    )
