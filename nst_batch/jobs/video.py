"""Clips as jobs: a manifest row or a watch job whose content is a video (or a folder of frames)
runs :func:`~nst_batch.video.run.stylize_video`, always alone (never batched with images).

A clip job is a :class:`~nst_batch.jobs.inputs.Job` with ``video`` set. It is done when its
output exists and the record beside it (``OUT.json``) holds the job's clip hash; a rerun of an
unfinished clip goes on from its last finished frame (``OUT.work/``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from nst_batch.engine.optimize import Progress
from nst_batch.errors import ConfigError
from nst_batch.images import check_output_path
from nst_batch.jobs.inputs import Job
from nst_batch.pool import ModelPool
from nst_batch.video.io import VIDEO_SUFFIXES, ClipRange, is_video_path
from nst_batch.video.run import DEFAULT_TEMPORAL_WEIGHT, VideoConfig, VideoResult, stylize_video

# The columns of a manifest row (keys of a watch job's params.json) that only clips take.
VIDEO_PARAMS: dict[str, Any] = {
    "temporal_weight": float,
    "frame_steps": int | None,
    "independent": bool,
    "start": float,
    "duration": float | None,
    "fps": float | None,
}


def is_clip(path: Path) -> bool:
    """A video file (by suffix) or a folder (of numbered frames)."""
    return is_video_path(path) or path.is_dir()


def video_suffixes() -> str:
    return ", ".join(VIDEO_SUFFIXES)


def video_config(params: Mapping[str, Any]) -> VideoConfig:
    """The clip settings from a row's or params.json's video keys (CSV text or JSON values;
    empty cells and None: the default); ConfigError naming the key."""
    values: dict[str, Any] = {}
    for key, kind in VIDEO_PARAMS.items():
        value = params.get(key)
        if value in (None, ""):
            continue
        if isinstance(value, str) and value.strip().lower() in ("none", "null"):
            value = None
        try:
            values[key] = TypeAdapter(kind).validate_python(value)
        except ValidationError as err:
            raise ConfigError(f"{key}: {err.errors()[0]['msg']} (got {value!r})") from None
    part = ClipRange(
        values.get("start", 0.0), values.get("duration"), values.get("fps")
    )  # ConfigError on a value out of range
    return VideoConfig(
        temporal_weight=values.get("temporal_weight", DEFAULT_TEMPORAL_WEIGHT),
        frame_steps=values.get("frame_steps"),
        independent=values.get("independent", False),
        part=part,
    )


def check_clip_output(output: Path) -> None:
    """A clip job's output must be a video file whose folder can be written; ConfigError or
    ImageError otherwise."""
    if not is_video_path(output):
        raise ConfigError(
            f"output {output}: a video's output must be a video file ({video_suffixes()}), "
            f"not {output.suffix or 'a name without a suffix'!r}"
        )
    check_output_path(output, image=False)


def run_clip(
    job: Job,
    models: ModelPool,
    progress: Callable[[Progress], None] | None = None,
    cancel_check: Callable[[], None] | None = None,
) -> VideoResult:
    """Stylize a clip job. Ctrl-C or an exception from ``cancel_check`` (called at every step)
    or ``progress`` ends it; the finished frames stay, so a rerun goes on from there."""
    assert job.video is not None
    check_clip_output(job.output)

    def frame_progress(index: int, count: int, p: Progress) -> None:
        if cancel_check is not None:
            cancel_check()
        if progress is not None:
            progress(p)

    return stylize_video(
        job.content, job.styles, job.output, job.config, job.video, frame_progress, models
    )


def clip_figures(record: Mapping[str, Any]) -> dict[str, Any]:
    """A report row's iterations, speed, loss and device from a clip's record (all frames)."""
    frames = record.get("frames") or []
    steps = sum(int(f.get("steps") or 0) for f in frames)
    seconds = sum(float(f.get("seconds") or 0.0) for f in frames)
    last = (frames[-1].get("final_loss") or {}) if frames else {}
    return {
        "iterations": steps,
        "iterations_per_s": round(steps / seconds, 3) if seconds > 0 else None,
        "loss": last.get("total"),
        "content_loss": last.get("content"),
        "style_loss": last.get("style"),
        "tv_loss": last.get("tv"),
        "device": str(record.get("device", "")),
    }


def clip_log_fields(result: VideoResult) -> dict[str, Any]:
    """What the daemon's "done" log line says of a clip."""
    return {
        "frames": len(result.frames),
        "resumed": result.resumed,
        "seconds_per_frame": result.record.get("seconds_per_frame"),
    }
