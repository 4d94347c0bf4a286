"""Clips in and out: video files through PyAV (FFmpeg), or folders of numbered frames.

A clip is read whole, each frame resized to the output size as it is decoded (so a long 4K input
costs the memory of its small frames only). The part taken is ``ClipRange``: a start and a
duration in seconds and an output frame rate (frames picked by time: the latest frame at or
before each output time). A video is written with H.264 (yuv420p, constant quality) to a temp
file beside the output, renamed into place when complete; the input's audio, when it has one, is
copied packet by packet (no re-encoding) over the same part.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any

from PIL import Image
from pydantic import Field

from nst_batch.errors import ConfigError, VideoError
from nst_batch.images import open_atomic, open_rgb, resize_long_edge, save_pil
from nst_batch.validation import check_fields

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".m4v", ".avi", ".webm")
# The FFmpeg muxer of each video suffix (a file object has no name to guess it from).
_MUXERS = {
    ".mp4": "mp4",
    ".m4v": "mp4",
    ".mkv": "matroska",
    ".mov": "mov",
    ".avi": "avi",
    ".webm": "webm",
}
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
FOLDER_FPS = Fraction(24)  # frame rate of a folder of frames unless --fps says otherwise
CRF = "16"  # x264 constant quality: visually lossless, so scores of the file match the frames


@dataclass(frozen=True)
class ClipRange:
    """The part of an input to take. For a folder of frames ``fps`` is the folder's rate."""

    start: Annotated[float, Field(ge=0)] = 0.0  # seconds from the input's start
    duration: Annotated[float, Field(gt=0)] | None = None  # seconds; None = to the end
    fps: Annotated[float, Field(gt=0, le=240)] | None = None  # None = the input's rate

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def end(self) -> float:
        return self.start + self.duration if self.duration is not None else float("inf")


@dataclass(frozen=True)
class Clip:
    """Decoded frames (RGB, resized) and what writing them back needs."""

    frames: list[Image.Image]
    fps: Fraction  # frames per second of ``frames``
    source: Path
    audio: bool = False  # the source is a video with an audio stream
    part: ClipRange = ClipRange()


def is_video_path(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise ConfigError("video needs PyAV and OpenCV: pip install 'nst-batch[video]'") from None
    return av


def numbered_frames(folder: Path) -> list[Path]:
    """The image files of a folder in the order of the last number in their names."""
    found = []
    for path in folder.iterdir():
        numbers = re.findall(r"\d+", path.stem)
        if path.suffix.lower() in FRAME_SUFFIXES and numbers and not path.name.startswith("."):
            found.append((int(numbers[-1]), path.name, path))
    return [path for _, _, path in sorted(found)]


def _pick(times: Sequence[float], part: ClipRange, fps: Fraction) -> list[int]:
    """Indices of the frames (at ``times``, seconds) to keep: those in the part, resampled to
    ``part.fps`` when given (the latest frame at or before each output time)."""
    kept = [i for i, t in enumerate(times) if part.start - 1e-6 <= t < part.end - 1e-6]
    if part.fps is None or not kept or Fraction(part.fps) == fps:
        return kept
    last = times[kept[-1]] + 1 / float(fps)
    picks, k = [], 0
    while (t := part.start + k / part.fps) < min(part.end, last) - 1e-6:
        picks.append(max((i for i in kept if times[i] <= t + 1e-6), default=kept[0]))
        k += 1
    return picks


def read_clip(source: Path, part: ClipRange, long_edge: int | None) -> Clip:
    """Frames of a video file or a folder of numbered frames, resized to ``long_edge``."""
    source = Path(source)
    if source.is_dir():
        paths = numbered_frames(source)
        fps = Fraction(part.fps).limit_denominator(1001) if part.fps else FOLDER_FPS
        times = [i / float(fps) for i in range(len(paths))]
        picked = _pick(times, ClipRange(part.start, part.duration), fps)
        frames = [_resized(open_rgb(paths[i]), long_edge) for i in picked]
        clip = Clip(frames, fps, source, part=part)
    elif source.is_file():
        clip = _read_video(source, part, long_edge)
    else:
        raise VideoError(f"{source}: no such video file or folder of frames")
    if not clip.frames:
        raise VideoError(f"{source}: no frames (in the part asked for)")
    if len({f.size for f in clip.frames}) > 1:
        raise VideoError(f"{source}: the frames are not all of one size")
    return clip


def _resized(img: Image.Image, long_edge: int | None) -> Image.Image:
    return img if long_edge is None else resize_long_edge(img, long_edge)


def _read_video(source: Path, part: ClipRange, long_edge: int | None) -> Clip:
    av = _av()
    try:
        with av.open(str(source)) as container:
            if not container.streams.video:
                raise VideoError(f"{source}: has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate or FOLDER_FPS
            fps = Fraction(rate).limit_denominator(100000)
            times, frames = [], []
            for i, frame in enumerate(container.decode(stream)):
                t = frame.time if frame.time is not None else i / float(fps)
                if t >= part.end:
                    break
                times.append(t)
                # Frames before the start are only counted (their pixels are never kept).
                frames.append(
                    _resized(frame.to_image(), long_edge) if t >= part.start - 1e-6 else None
                )
            audio = bool(container.streams.audio)
    except (av.FFmpegError, OSError, ValueError, EOFError) as err:
        raise VideoError(f"{source}: not a readable video ({err})") from None
    picked = _pick(times, part, fps)
    out_fps = Fraction(part.fps).limit_denominator(1001) if part.fps else fps
    images = [frames[i] for i in picked]
    return Clip([f for f in images if f is not None], out_fps, source, audio, part)


def check_output(output: Path) -> None:
    """Fail before any work when ``output`` is neither a video file nor a folder to be."""
    if output.suffix and not is_video_path(output):
        raise VideoError(
            f"{output}: unsupported video format {output.suffix!r}; use one of "
            f"{', '.join(VIDEO_SUFFIXES)} or a folder (a name without a suffix)"
        )
    if is_video_path(output) and output.is_dir():
        raise VideoError(f"{output}: is a directory")
    if not is_video_path(output) and output.exists() and not output.is_dir():
        raise VideoError(f"{output}: a file is in the way of the folder of frames")


def frame_name(index: int) -> str:
    """The file name of frame ``index`` (0-based) in a folder of frames: frame_00001.png."""
    return f"frame_{index + 1:05d}.png"


def write_frames_folder(frames: Sequence[Path], output: Path) -> None:
    """Copy finished frames into ``output`` (a folder), each file atomically."""
    output.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(frames):
        save_pil(open_rgb(path), output / frame_name(i))


def write_video(frames: Sequence[Path], output: Path, fps: Fraction, audio: Clip | None) -> None:
    """Encode frame files as H.264 into ``output`` atomically (temp file, then os.replace),
    with ``audio``'s source audio over its part copied in when it has one."""
    av = _av()
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        # The images' atomic writer: temp file, fsync, rename, and the mode a plain open()
        # gives (umask), so the clip is readable like any file the user writes.
        with (
            open_atomic(output) as file,
            av.open(file, mode="w", format=_MUXERS[output.suffix.lower()]) as container,
        ):
            stream = _video_stream(container, frames[0], fps)
            # Every stream is declared before the first packet (the header is written then).
            source = av.open(str(audio.source)) if audio is not None and audio.audio else None
            try:
                target = None
                if source is not None:
                    target = container.add_stream_from_template(source.streams.audio[0])
                _encode(container, stream, frames, fps)
                if source is not None:
                    _copy_audio(container, source, target, audio.part)  # type: ignore[union-attr]
            finally:
                if source is not None:
                    source.close()
    except (av.FFmpegError, OSError) as err:
        raise VideoError(f"{output}: cannot write the video ({err})") from None


def _video_stream(container: Any, first: Path, fps: Fraction) -> Any:
    with Image.open(first) as img:
        # yuv420p needs even sizes: an odd last row or column is dropped.
        width, height = img.width // 2 * 2, img.height // 2 * 2
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.options = {"crf": CRF}
    return stream


def _encode(container: Any, stream: Any, frames: Sequence[Path], fps: Fraction) -> None:
    av = _av()
    for i, path in enumerate(frames):
        img = open_rgb(path).crop((0, 0, stream.width, stream.height))
        frame = av.VideoFrame.from_image(img)
        frame.pts, frame.time_base = i, Fraction(1) / fps
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def _copy_audio(container: Any, source: Any, target: Any, part: ClipRange) -> None:
    """The source's audio packets over ``part``, shifted to start at 0, copied as they are."""
    stream = source.streams.audio[0]
    base = stream.time_base
    offset = round(Fraction(part.start) / base)
    for packet in source.demux(stream):
        if packet.pts is None or packet.size == 0:
            continue
        t = float(packet.pts * base)
        if t < part.start - 1e-6 or t >= part.end:
            continue
        packet.pts -= offset
        packet.dts = None if packet.dts is None else packet.dts - offset
        packet.stream = target
        container.mux(packet)


def frames_of(path: Path) -> Iterator[Image.Image]:
    """Every frame of a video file or folder of frames, at its own size (for scoring)."""
    clip = read_clip(path, ClipRange(), None)
    yield from clip.frames
