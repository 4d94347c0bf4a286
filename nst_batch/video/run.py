"""Stylizing a clip frame by frame, temporally coherent and resumable.

Frame 1 is a normal stylization. Frame t > 1 starts from stylized frame t-1 warped into it by
the input's optical flow (t to t-1), with the pixels the warp cannot give (disoccluded, motion
boundaries, outside the frame) from the content, and its objective has the temporal term on the
pixels whose forward and backward flows agree (Ruder, Dosovitskiy and Brox, GCPR 2016). It needs
fewer steps than the first: ``VideoConfig.frame_steps``, a third of the first's by default.
``independent`` runs the baseline: every frame alone, from its own content, all the steps.

Every finished frame is written to a work folder beside the output (``OUT.work/``): its PNG, then
its JSON record (written last, atomically, with the clip's hash). A rerun after a crash or
Ctrl-C takes the frames whose records carry the same hash and goes on from the first missing
one; frames are kept at 8 bits in memory as on disk, so a resumed clip is the one an unbroken
run makes. The output is written at the end, atomically; then the work folder is removed (unless
``keep_frames``) and the clip's record written beside the output (``OUT.json``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import Field
from torch import Tensor

from nst_batch.config import StylizeConfig, check_fits
from nst_batch.engine.model import resolve_device
from nst_batch.engine.optimize import OptimizeResult, Progress
from nst_batch.engine.temporal import Temporal, masked_fill, temporal_terms
from nst_batch.engine.weights import sha256_file
from nst_batch.errors import VideoError
from nst_batch.images import open_rgb, save_image, to_pil, to_tensor, write_atomic
from nst_batch.pool import ModelPool
from nst_batch.transfer import stylize_tensors
from nst_batch.validation import check_fields
from nst_batch.version import __version__
from nst_batch.video import flow as flows
from nst_batch.video.io import (
    Clip,
    ClipRange,
    check_output,
    frame_name,
    is_video_path,
    read_clip,
    write_frames_folder,
    write_video,
)

# Weight of the temporal term (mean squared pixel difference on trusted pixels) against the
# default objective (relative content and style errors, style weight 45). On the benchmark's
# clips (benchmarks/video.py) the warped start does most of the work: 30, 100 and 300 gave the
# same warping error within 10% on a 5-frame 64 px trial; 100 keeps a margin either way.
DEFAULT_TEMPORAL_WEIGHT = 100.0


@dataclass(frozen=True)
class VideoConfig:
    """What a clip adds to a stylization: the temporal term, the later frames' steps, the part."""

    temporal_weight: Annotated[float, Field(ge=0)] = DEFAULT_TEMPORAL_WEIGHT
    # steps of each frame after the first; None = a third of the first frame's steps
    frame_steps: Annotated[int, Field(ge=1)] | None = None
    independent: bool = False  # the baseline: each frame alone, all steps, no temporal term
    part: ClipRange = field(default_factory=ClipRange)
    keep_frames: bool = False  # keep the work folder after the output is written

    def __post_init__(self) -> None:
        check_fields(self)

    def later_steps(self, first: int) -> int:
        """Steps of each frame after the first when the first runs ``first``."""
        if self.independent:
            return first
        return self.frame_steps if self.frame_steps is not None else max(1, first // 3)


@dataclass(frozen=True)
class FrameRecord:
    """One finished frame, as its JSON in the work folder and the clip's record hold it."""

    index: int  # 0-based
    init: str  # "content" (first frame, independent) or "warped"
    steps: int
    seconds: float  # optimization wall time
    trusted: float | None  # fraction of pixels the temporal term covers; None: no term
    temporal: float | None  # the unweighted temporal term of the saved frame
    final_loss: dict[str, float | None]  # total (with the temporal term), content, style, tv
    stop_reason: str
    clip_hash: str


@dataclass(frozen=True)
class VideoResult:
    output: Path
    frames: list[FrameRecord]
    resumed: int  # frames taken from the work folder of an earlier run
    record: dict[str, Any]  # what OUT.json holds


FrameHook = Callable[[FrameRecord], None]
FrameProgress = Callable[[int, int, Progress], None]  # frame index, frame count, the step


def work_folder(output: Path) -> Path:
    """Where a clip's finished frames wait: ``OUT.work`` beside the output."""
    return output.parent / f"{output.name}.work"


def clip_hash(
    source: Path, styles: Sequence[Path], config: StylizeConfig, video: VideoConfig
) -> str:
    """What makes a clip's frames: the input's and styles' bytes and every setting (but where
    it runs and whether the frames are kept)."""
    files = [source] if source.is_file() else sorted(p for p in source.iterdir() if p.is_file())
    settings = dataclasses.asdict(config)
    for name in ("device", "targets_backend", "cuda_graphs"):
        settings["model"].pop(name)
    settings.pop("memory")
    settings["optim"].pop("sync_every")
    record = {
        "input": [sha256_file(p) for p in files],
        "styles": [sha256_file(Path(s)) for s in styles],
        "settings": settings,
        "video": dataclasses.asdict(dataclasses.replace(video, keep_frames=False)),
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


def recorded_clip_hash(output: Path) -> str | None:
    """The clip hash a finished output's record (``OUT.json``) holds; None when the output or
    its record is missing or not one (a stylized image's sidecar has none)."""
    if not output.exists():
        return None
    try:
        record = json.loads(output.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    found = record.get("clip_hash") if isinstance(record, dict) else None
    return found if isinstance(found, str) else None


def _finished(work: Path, index: int, digest: str) -> tuple[Tensor, FrameRecord] | None:
    """A frame an earlier run finished with the same settings, or None."""
    png = work / frame_name(index)
    try:
        record = FrameRecord(**json.loads(png.with_suffix(".json").read_text()))
        if record.clip_hash != digest or record.index != index:
            return None
        return to_tensor(open_rgb(png)), record
    except (OSError, ValueError, TypeError):
        return None


def _frame_config(config: StylizeConfig, video: VideoConfig) -> StylizeConfig:
    """A later frame's settings: one level at the frame's size (the warped start is used
    directly) and the later frames' steps."""
    optim = dataclasses.replace(config.optim, steps=video.later_steps(config.optim.steps))
    return dataclasses.replace(config, scales=1, scale_steps=None, optim=optim)


@dataclass
class _Frames:
    """The clip being stylized: its inputs, model, settings and the previous stylized frame."""

    clip: Clip
    styles: list[Tensor]
    config: StylizeConfig
    video: VideoConfig
    model: Any
    targets: Any
    device: torch.device
    digest: str
    progress: FrameProgress | None = None
    previous: Tensor | None = None  # (1, 3, H, W) on the CPU, 8-bit values

    def content(self, index: int) -> Tensor:
        return to_tensor(self.clip.frames[index])  # (1, 3, H, W)

    def stylize(self, index: int) -> tuple[Tensor, FrameRecord]:
        """Stylize frame ``index`` (Ctrl-C: KeyboardInterrupt, nothing kept)."""
        content = self.content(index).to(self.device)
        n = len(self.clip.frames)

        def report(p: Progress) -> None:
            if self.progress is not None:
                self.progress(index, n, p)

        temporal, trusted, config = None, None, self.config
        if index > 0 and not self.video.independent:
            assert self.previous is not None
            tie = flows.frame_flow(self.content(index - 1), self.content(index))
            # Bicubic: a bilinear warp blurs the strokes a little more at every frame, and
            # the few later steps do not bring them back (style distance 1.27x vs 1.05x of the
            # baseline on a 5-frame pan at 64 px).
            warped = flows.warp(self.previous, tie.backward, "bicubic").clamp(0, 1)
            warped = warped.to(self.device)  # (1, 3, H, W)
            mask = tie.mask_tensor.to(self.device)  # (1, 1, H, W)
            init = masked_fill(warped, content, mask)
            temporal = Temporal(warped, mask, self.video.temporal_weight, init)
            trusted, config = tie.trusted, _frame_config(self.config, self.video)
        result = stylize_tensors(
            content, self.styles, config, self.model, report, self.targets, temporal=temporal
        )
        if result.interrupted:
            raise KeyboardInterrupt  # a frame is kept whole or not at all
        image = to_tensor(to_pil(result.image))  # 8 bits, as the PNG holds it
        return image, self._record(index, result, temporal, image, trusted)

    def _record(
        self,
        index: int,
        result: OptimizeResult,
        temporal: Temporal | None,
        image: Tensor,
        trusted: float | None,
    ) -> FrameRecord:
        value = None
        if temporal is not None:
            with torch.no_grad():
                term = temporal_terms(image.to(self.device), temporal.warped, temporal.mask)
            value = round(float(term.sum()), 8)
        terms = result.terms[0] if result.terms else (None,) * 4
        names = ("total", "content", "style", "tv")
        return FrameRecord(
            index=index,
            init="content" if temporal is None else "warped",
            steps=result.steps,
            seconds=round(result.elapsed, 3),
            trusted=None if trusted is None else round(trusted, 4),
            temporal=value,
            final_loss=dict(zip(names, terms, strict=True)),
            stop_reason=result.stop_reason,
            clip_hash=self.digest,
        )


def stylize_video(
    source: Path,
    styles: Sequence[Path],
    output: Path,
    config: StylizeConfig,
    video: VideoConfig | None = None,
    progress: FrameProgress | None = None,
    models: ModelPool | None = None,
    frame_done: FrameHook | None = None,
) -> VideoResult:
    """Stylize a clip (a video file or a folder of numbered frames) into ``output`` (a video
    file or a folder of frames); see the module docstring. ``frame_done`` is called after each
    frame is saved to the work folder; what it raises ends the run (the frames so far stay)."""
    wall = time.perf_counter()
    video = video or VideoConfig()
    source, output = Path(source), Path(output)
    check_output(output)
    if output.resolve() == source.resolve():
        raise VideoError(f"{output}: is the input; write the stylized clip elsewhere")
    clip = read_clip(source, video.part, config.size)
    style_imgs = [open_rgb(Path(s), config.max_pixels) for s in styles]
    check_fits(config, clip.frames[0].size, [s.size for s in style_imgs])
    device = resolve_device(config.model.device)
    models = models or ModelPool()
    model, weights = models.get(config.model, config.loss.layers, device)
    frames = _Frames(
        clip,
        [to_tensor(s) for s in style_imgs],
        config,
        video,
        model,
        models.target_features(config.model, config.loss.layers, device),
        device,
        clip_hash(source, styles, config, video),
        progress,
    )
    work = work_folder(output)
    work.mkdir(parents=True, exist_ok=True)
    records, resumed = [], 0
    for index in range(len(clip.frames)):
        done = _finished(work, index, frames.digest)
        if done is not None:
            resumed += 1
        else:
            done = frames.stylize(index)
            save_image(done[0], work / frame_name(index))
            text = json.dumps(dataclasses.asdict(done[1]), indent=2).encode() + b"\n"
            write_atomic((work / frame_name(index)).with_suffix(".json"), text)
            if frame_done is not None:
                frame_done(done[1])
        frames.previous, record = done
        records.append(record)
    paths = [work / frame_name(i) for i in range(len(clip.frames))]
    if is_video_path(output):
        write_video(paths, output, clip.fps, clip)
    else:
        write_frames_folder(paths, output)
    record = _clip_record(source, styles, output, clip, config, video, records)
    record |= {
        "device": str(device),
        "weights": {"source": weights.source.name, "sha256": weights.sha256},
        "resumed_frames": resumed,
        "wall_seconds": round(time.perf_counter() - wall, 3),
        "clip_hash": frames.digest,  # what a manifest or watch job compares to skip a done clip
    }
    write_atomic(output.with_suffix(".json"), json.dumps(record, indent=2).encode() + b"\n")
    if not video.keep_frames:
        shutil.rmtree(work, ignore_errors=True)
    return VideoResult(output, records, resumed, record)


def _clip_record(
    source: Path,
    styles: Sequence[Path],
    output: Path,
    clip: Clip,
    config: StylizeConfig,
    video: VideoConfig,
    records: Sequence[FrameRecord],
) -> dict[str, Any]:
    """The clip's JSON record (``OUT.json``): inputs, settings, the temporal method and each
    frame's steps and timing."""
    seconds = [r.seconds for r in records]
    later = [r.steps for r in records[1:]]
    return {
        "nst_batch_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": {
            "path": str(source),
            "frames": len(clip.frames),
            "fps": float(clip.fps),
            "size": list(clip.frames[0].size),
            **dataclasses.asdict(video.part),
        },
        "styles": [str(s) for s in styles],
        "output": {"path": str(output), "audio": clip.audio and is_video_path(output)},
        "parameters": dataclasses.asdict(config),
        "video": {
            "method": "independent" if video.independent else "temporal (Ruder et al. 2016)",
            "flow": None if video.independent else flows.FLOW_METHOD,
            "temporal_weight": 0.0 if video.independent else video.temporal_weight,
            "first_frame_steps": records[0].steps,
            "frame_steps": video.later_steps(config.optim.steps),
            "mean_later_steps": sum(later) / len(later) if later else None,
        },
        "torch_version": torch.__version__,
        "seconds_per_frame": round(sum(seconds) / len(seconds), 3),
        "frames": [
            {k: v for k, v in dataclasses.asdict(r).items() if k != "clip_hash"} for r in records
        ],
    }
