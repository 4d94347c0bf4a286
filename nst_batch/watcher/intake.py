"""A claimed job folder checked and turned into a :class:`~nst_batch.jobs.Job`, or an error
saying why not. Every check a user's drop can fail raises an NstError (the job goes to
``failed/``, never retried: the same bytes would fail the same way)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nst_batch.errors import ConfigError, ImageError
from nst_batch.images import open_rgb
from nst_batch.jobs.inputs import Job
from nst_batch.jobs.video import VIDEO_PARAMS, video_config
from nst_batch.params import configs_from_params
from nst_batch.video.io import is_video_path
from nst_batch.watcher.config import WatchConfig
from nst_batch.watcher.inbox import FOLDER_PART, PARAMS, Claimed

NAMED_WEIGHTS = ("bundled", "torchvision")  # a job's params.json may not point at files
CLIP_SUFFIX = ".mp4"  # a clip job's output (H.264), whatever the input's container


def _inside(path: Path, root: Path) -> bool:
    return os.path.commonpath([os.path.realpath(path), os.path.realpath(root)]) == str(
        os.path.realpath(root)
    )


def _part(folder: Path, role: str, inbox: Path) -> Path:
    found = [p for p in folder.iterdir() if (m := FOLDER_PART.match(p.name)) and m["role"] == role]
    if not found:
        raise ImageError(f"no {role} image (expected {role}.EXT)")
    if len(found) > 1:
        names = ", ".join(sorted(p.name for p in found))
        raise ImageError(f"{len(found)} {role} images ({names}); give exactly one")
    path = found[0]
    if path.is_symlink() and not _inside(path, inbox):
        raise ImageError(f"{path.name}: symlink to {os.readlink(path)}, outside the inbox")
    return path


def _check_image(path: Path, max_edge: int, max_pixels: int | None) -> None:
    """Decode fully now (zero-byte, truncated, not an image, bomb, FIFO...), then the edge cap."""
    if not os.access(path, os.R_OK):
        raise ImageError(f"{path.name}: not readable (permissions)")
    try:
        img = open_rgb(path, max_pixels)
    except ImageError as err:  # name the part as the user knows it, not by its work/ path
        raise ImageError(str(err).replace(str(path), path.name)) from None
    with img:
        if max(img.size) > max_edge:
            w, h = img.size
            raise ImageError(f"{path.name}: {w}x{h} is over the {max_edge} px edge-length cap")


def _params(folder: Path) -> dict[str, Any]:
    path = folder / PARAMS
    if not path.exists() and not path.is_symlink():
        return {}
    if path.is_symlink() or not path.is_file():
        raise ConfigError(f"{PARAMS}: not a regular file")
    try:
        params = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"{PARAMS}: not valid JSON ({err})") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{PARAMS}: expected a JSON object of parameters")
    return params


def _safe_paths(params: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Parameters that name files may only name a file in the job itself."""
    weights = params.get("weights")
    if weights is not None and weights not in NAMED_WEIGHTS:
        raise ConfigError(
            f"weights: {weights!r} is not allowed in a job's parameters "
            f"(only {' or '.join(NAMED_WEIGHTS)}; the daemon's --weights sets files)"
        )
    init = params.get("init")
    if isinstance(init, str) and init not in ("content", "noise", ""):
        path = folder / init
        if os.path.isabs(init) or not _inside(path, folder) or Path(init).name != init:
            raise ConfigError(f"init: {init!r} leaves the job; name a file in the job itself")
        if not path.is_file():
            raise ConfigError(f"init: {init!r} is not a file in the job")
        params = {**params, "init": str(path)}
    return params


def build_job(claimed: Claimed, config: WatchConfig) -> Job:
    """Check a claimed job fully and describe it; NstError with the reason when it is bad."""
    folder = claimed.folder
    try:
        content = _part(folder, "content", config.inbox)
        style = _part(folder, "style", config.inbox)
    except PermissionError as err:
        raise ImageError(f"job folder not readable ({err.strerror})") from None
    params = _safe_paths(_params(folder), folder)
    clip = is_video_path(content)  # NAME.content.mp4: stylized frame by frame into NAME.mp4
    clip_params = {k: params.pop(k) for k in VIDEO_PARAMS if k in params}
    if clip_params and not clip:
        raise ConfigError(f"{', '.join(clip_params)}: only for a video content (content.mp4)")
    stylize_config, outputs = configs_from_params(params, config.default_params())
    # After the settings (they may raise the pixel limit); a clip's frames are resized to
    # ``size`` as they are decoded, and a bad clip fails when it is read.
    for path in (style,) if clip else (content, style):
        _check_image(path, config.max_edge, stylize_config.max_pixels)
    if clip and not os.access(content, os.R_OK):
        raise ImageError(f"{content.name}: not readable (permissions)")
    if stylize_config.size > config.max_edge:
        raise ConfigError(
            f"size {stylize_config.size} is over this daemon's {config.max_edge} px cap"
        )
    video = video_config(clip_params) if clip else None
    suffix = CLIP_SUFFIX if clip else config.output_format
    output = config.out / f"{claimed.name}{suffix}"
    return Job(content, (style,), output, stylize_config, outputs, claimed.name, video)
