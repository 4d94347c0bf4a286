"""Clips: ``video`` (temporally coherent stylization, resumable) and ``score-video``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from nst_batch.cli import options as opt
from nst_batch.cli.common import fail, mapped_errors, sigterm_as_ctrl_c, stderr
from nst_batch.cli.stylize import _configs

if TYPE_CHECKING:
    from nst_batch.config import StylizeConfig
    from nst_batch.video.run import FrameRecord, VideoConfig

TemporalWeight = Annotated[
    float | None,
    typer.Option(
        metavar="W",
        help="Weight of the temporal term (mean squared difference to the warped previous "
        "stylized frame on consistent pixels) (default: 100).",
    ),
]
FrameSteps = Annotated[
    int | None,
    typer.Option(metavar="N", help="Steps of each frame after the first (default: --steps / 3)."),
]
Independent = Annotated[
    bool,
    typer.Option(
        "--independent",
        metavar="",
        help="Baseline: every frame alone from its content, all --steps, no temporal term.",
    ),
]
Start = Annotated[float, typer.Option(metavar="S", help="Start at S seconds into INPUT.")]
Duration = Annotated[
    float | None, typer.Option(metavar="S", help="Take S seconds (default: to the end).")
]
Fps = Annotated[
    float | None,
    typer.Option(
        metavar="FPS",
        help="Output frame rate (frames picked by time); for a folder of frames, its rate "
        "(default: the input's; 24 for a folder).",
    ),
]
KeepFrames = Annotated[
    bool,
    typer.Option("--keep-frames", metavar="", help="Keep the work folder OUT.work/ at the end."),
]


@mapped_errors()
def video_command(
    source: Path = typer.Argument(
        ..., metavar="INPUT", help="A video file or a folder of numbered frames."
    ),
    style_args: list[Path] | None = typer.Argument(
        None, metavar="STYLE...", help="Style image(s)."
    ),
    output: Path = typer.Option(
        ..., "--output", "-o", metavar="OUT", help="A video file (.mp4, .mkv, ...) or a folder."
    ),
    temporal_weight: TemporalWeight = None,
    frame_steps: FrameSteps = None,
    independent: Independent = False,
    start: Start = 0.0,
    duration: Duration = None,
    fps: Fps = None,
    keep_frames: KeepFrames = False,
    styles: opt.Styles = None,
    style_blend: opt.StyleBlend = None,
    style_scale: opt.StyleScale = None,
    preserve_colors: opt.PreserveColors = None,
    preset: opt.Preset = opt.DEFAULTS.preset,
    size: opt.Size = None,
    steps: opt.Steps = None,
    optimizer: opt.Optimizer = None,
    lr: opt.Lr = None,
    content_weight: opt.ContentWeight = None,
    style_weight: opt.StyleWeight = None,
    tv_weight: opt.TvWeight = None,
    content_layers: opt.ContentLayers = None,
    style_layers: opt.StyleLayers = None,
    init: opt.Init = None,
    seed: opt.Seed = None,
    scales: opt.Scales = None,
    scale_steps: opt.ScaleSteps = None,
    ema: opt.Ema = None,
    max_seconds: opt.MaxSeconds = None,
    tolerance: opt.Tolerance = None,
    window: opt.Window = None,
    line_search: opt.LineSearch = None,
    device: opt.Device = None,
    weights: opt.Weights = None,
    pooling: opt.Pooling = None,
    max_pixels: opt.MaxPixels = None,
    targets_backend: opt.Targets = None,
    precision: opt.Precision = None,
    cuda_graphs: opt.CudaGraphs = None,
    max_memory: opt.MaxMemory = None,
    tile: opt.Tile = None,
) -> None:
    """Stylize a clip with temporal coherence (Ruder et al. 2016): frame 1 as `stylize` does,
    each later frame from the previous one warped by optical flow, with a temporal loss.
    Resumable: finished frames wait in OUT.work/; a rerun goes on from the last one."""
    from nst_batch.video.io import ClipRange
    from nst_batch.video.run import DEFAULT_TEMPORAL_WEIGHT, VideoConfig

    params = opt.parameters({**locals(), "save_every": 0, "sheet": False})
    config, _ = _configs(params)
    style_list = list(style_args or []) + list(styles or [])
    if not style_list:
        raise fail("give a STYLE image (or --style PATH)", 2)
    video = VideoConfig(
        temporal_weight=DEFAULT_TEMPORAL_WEIGHT if temporal_weight is None else temporal_weight,
        frame_steps=frame_steps,
        independent=independent,
        part=ClipRange(start, duration, fps),
        keep_frames=keep_frames,
    )
    _run_video(source, style_list, output, config, video)


def _run_video(
    source: Path, styles: list[Path], output: Path, config: StylizeConfig, video: VideoConfig
) -> None:
    from nst_batch.video.run import stylize_video, work_folder

    def done(record: FrameRecord) -> None:
        trusted = "" if record.trusted is None else f", {record.trusted:.0%} of pixels warped"
        print(
            f"frame {record.index + 1}: {record.steps} steps from {record.init}, "
            f"{record.seconds:.1f}s{trusted}",
            file=sys.stderr,
            flush=True,
        )

    stopped = f"interrupted; finished frames kept in {work_folder(output)}; rerun to go on"
    with mapped_errors(interrupted=stopped), sigterm_as_ctrl_c():
        result = stylize_video(
            source,
            styles,
            output,
            config,
            video,
            frame_done=done,
        )
    record = result.record
    resumed = f", {result.resumed} resumed" if result.resumed else ""
    stderr().print(
        f"wrote {output} ({len(result.frames)} frames{resumed}; "
        f"{record['seconds_per_frame']:.2f} s/frame) and {output.with_suffix('.json')}",
        soft_wrap=True,
    )


@mapped_errors()
def score_video_command(
    output: Path = typer.Argument(..., metavar="OUT", help="The stylized clip (file or folder)."),
    source: Path = typer.Argument(..., metavar="INPUT", help="The clip it was made from."),
    styles: list[Path] | None = typer.Argument(
        None, metavar="STYLE...", help="Style image(s) (default: those OUT.json records)."
    ),
    weights: opt.Weights = opt.DEFAULTS.model.weights,
    device: opt.Device = opt.DEFAULTS.model.device,
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON on stdout."),
) -> None:
    """Temporal warping error (mean |S_t - warp(S_t-1)| where the input's flow is consistent)
    and the mean per-frame style and content distances of OUT; lower is better."""
    import dataclasses
    import json

    from nst_batch.metrics import MetricsConfig
    from nst_batch.video.score import recorded_part, score_video

    part, recorded = recorded_part(output)
    config = MetricsConfig(weights=weights or "bundled", device=device or "auto")
    scores = score_video(output, source, list(styles or recorded), part, config)
    if as_json:
        print(json.dumps(dataclasses.asdict(scores), indent=2))
        return
    print(f"frames:           {scores.frames}")
    print(f"warping error:    {scores.warping_error:.5f}")
    print(f"style distance:   {scores.style:.4f}")
    print(f"content distance: {scores.content:.4f}")
