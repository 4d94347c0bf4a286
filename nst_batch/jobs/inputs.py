"""A job as a value (what to stylize with what, where to), and its decoded inputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from nst_batch.config import INIT_KEYWORDS, OutputConfig, StylizeConfig, check_fits
from nst_batch.errors import ConfigError
from nst_batch.images import (
    check_not_inputs,
    check_output_path,
    make_output_folder,
    open_rgb,
    resize_long_edge,
)
from nst_batch.jobs.sidecar import parameter_hash, recorded_hash, sidecar_path
from nst_batch.video.run import VideoConfig, clip_hash, recorded_clip_hash


@dataclass(frozen=True)
class Job:
    content: Path
    styles: tuple[Path, ...]
    output: Path
    config: StylizeConfig = field(default_factory=StylizeConfig)
    outputs: OutputConfig = field(default_factory=OutputConfig)
    name: str = ""  # how reports and logs refer to it (manifest line, inbox entry)
    # set: ``content`` is a clip (a video file or a folder of frames) and ``output`` a video
    # file, made by nst_batch.video.run.stylize_video (nst_batch.jobs.video)
    video: VideoConfig | None = None

    def parameter_hash(self) -> str:
        if self.video is not None:
            return clip_hash(self.content, self.styles, self.config, self.video)
        return parameter_hash(self.content, self.styles, self.config)


def is_done(job: Job) -> bool:
    """The job's output and sidecar exist and were made from the same inputs and settings."""
    found = recorded_hash(job.output) if job.video is None else recorded_clip_hash(job.output)
    return found is not None and found == job.parameter_hash()


@dataclass(frozen=True)
class JobInputs:
    """A job with its images decoded (and the content at the output size)."""

    job: Job
    content_img: Image.Image
    style_imgs: list[Image.Image]
    content_small: Image.Image  # at the output size


def read_inputs(job: Job) -> JobInputs:
    """Check and decode a job's inputs before any model work, so bad input fails in a second."""
    config = job.config
    check_output_path(job.output)
    if not job.styles:
        raise ConfigError("at least one style image is needed")
    if config.style_blend is not None and len(config.style_blend) != len(job.styles):
        raise ConfigError(
            f"style_blend has {len(config.style_blend)} weights for {len(job.styles)} style images"
        )
    inputs = [job.content, *job.styles]
    if config.init not in INIT_KEYWORDS:
        if not Path(config.init).exists():
            raise ConfigError(
                f"init {config.init!r} is not content, noise (or random) or an image file"
            )
        open_rgb(Path(config.init), config.max_pixels)  # fail now on a bad init image
        inputs.append(Path(config.init))
    check_not_inputs([job.output, sidecar_path(job.output)], inputs)
    content_img = open_rgb(job.content, config.max_pixels)
    style_imgs = [open_rgb(p, config.max_pixels) for p in job.styles]
    content_small = resize_long_edge(content_img, config.size)
    check_fits(config, content_small.size, [img.size for img in style_imgs])
    make_output_folder(job.output)  # as ``run`` does; checked writable above
    return JobInputs(job, content_img, style_imgs, content_small)


def make_job(
    content: Path,
    styles: Path | Sequence[Path],
    output: Path,
    config: StylizeConfig,
    outputs: OutputConfig | None = None,
) -> Job:
    """A job from the loose arguments :func:`~nst_batch.jobs.run.stylize` takes."""
    paths = [styles] if isinstance(styles, (str, Path)) else list(styles)
    styles_ = tuple(Path(p) for p in paths)
    return Job(Path(content), styles_, Path(output), config, outputs or OutputConfig())
