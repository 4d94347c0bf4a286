"""Planning a manifest run: every row checked before any work, as this shard's jobs.

A typo on line 900 is found in a second, not after hours: rows are checked (inputs decodable,
outputs writable, settings valid, no two rows writing one file, no output over an input) and
every problem is reported at once, with line numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nst_batch.config import INIT_KEYWORDS, check_fits
from nst_batch.engine.model import resolve_device
from nst_batch.engine.weights import NAMED_SOURCES, resolve_source
from nst_batch.errors import ConfigError, ManifestError, NstError
from nst_batch.images import check_output_path, file_identity, open_rgb, resized_shape
from nst_batch.jobs.inputs import Job, is_done
from nst_batch.jobs.sidecar import sidecar_path
from nst_batch.jobs.video import VIDEO_PARAMS, check_clip_output, is_clip, video_config
from nst_batch.manifest.rows import (
    STYLE_SEPARATOR,
    load_config_file,
    read_manifest,
    resolve_parameter_paths,
    split_styles,
)
from nst_batch.manifest.shard import Shard
from nst_batch.params import configs_from_params, parameter_names
from nst_batch.video.io import is_video_path
from nst_batch.video.run import VideoConfig

Status = Literal["done", "failed", "skipped", "interrupted", "would-run"]
STATUSES: tuple[Status, ...] = ("done", "failed", "skipped", "interrupted", "would-run")


@dataclass(frozen=True)
class ManifestConfig:
    """How to run a manifest. ``defaults`` are flat stylize parameters (the command line's)."""

    defaults: Mapping[str, Any] = field(default_factory=dict)
    config_file: Path | None = None  # JSON or TOML table of flat parameters, under ``defaults``
    force: bool = False  # redo jobs that are already done
    dry_run: bool = False  # validate and plan only: nothing is loaded, run or written
    shard: Shard | None = None
    batch_size: int = 1  # jobs of one size/layer set/device run together (CUDA; issue 7)
    check_onnx: Path | None = None  # an nst-batch ONNX export to check the engine against first
    report_dir: Path | None = None  # where the report files go; None = the manifest's folder
    # for the Ray runner (nst_batch.distributed): "" or None = a local cluster, else its address
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, not {self.batch_size}")


@dataclass(frozen=True)
class PlannedJob:
    """A validated manifest row, ready to run (or to skip, when ``done``)."""

    line: int
    job: Job
    raw: Mapping[str, str]  # content, styles, output as written in the manifest (for reports)
    done: bool = False  # output and sidecar exist with this job's parameter hash

    def outcome(self, status: Status, reason: str = "", **values: Any) -> JobOutcome:
        return JobOutcome(
            line=self.line,
            name=self.job.name,
            content=self.raw["content"],
            styles=self.raw["styles"],
            output=self.raw["output"],
            size=self.job.config.size,
            steps=self.job.config.optim.steps,
            status=status,
            reason=reason,
            **values,
        )


@dataclass(frozen=True)
class JobOutcome:
    """One report row."""

    line: int
    name: str
    content: str
    styles: str  # ";"-separated, as in a CSV manifest
    output: str
    size: int
    steps: int
    status: Status
    reason: str = ""
    seconds: float | None = None
    iterations: int | None = None
    iterations_per_s: float | None = None
    loss: float | None = None
    content_loss: float | None = None
    style_loss: float | None = None
    tv_loss: float | None = None
    # False when the job ran but its result is not better than its start (reason says why)
    converged: bool | None = None
    device: str = ""


@dataclass(frozen=True)
class Plan:
    """What a run will do: this shard's jobs in manifest order."""

    manifest: Path
    rows: int  # rows in the whole manifest
    jobs: tuple[PlannedJob, ...]
    shard: Shard | None


class _Checker:
    """Checks inputs once per file, however many rows use them."""

    def __init__(self, check_device: bool) -> None:
        self.check_device = check_device
        self._images: dict[tuple[Path, int | None], str] = {}
        self._sizes: dict[Path, tuple[int, int]] = {}
        self._devices: dict[str, str] = {}

    def image(self, path: Path, max_pixels: int | None = None) -> str:
        key = (path, max_pixels)
        if key not in self._images:
            try:
                self._sizes[path] = open_rgb(path, max_pixels).size
                self._images[key] = ""
            except NstError as err:
                self._images[key] = str(err)
        return self._images[key]

    def size(self, path: Path) -> tuple[int, int]:
        """(W, H) as decoded, EXIF rotation applied; for a path :meth:`image` found good."""
        return self._sizes[path]

    def device(self, name: str) -> str:
        if not self.check_device:
            return ""  # checked where the jobs run (a Ray worker may have the GPU we lack)
        if name not in self._devices:
            try:
                resolve_device(name)
                self._devices[name] = ""
            except NstError as err:
                self._devices[name] = str(err)
        return self._devices[name]


def _output_problem(output: Path, clip: bool) -> str:
    try:
        if clip:
            check_clip_output(output)
        else:
            check_output_path(output)  # missing folders are created; a file in the way is not
    except NstError as err:
        return str(err) if clip else f"output {err}"
    return ""


def _clip_row(
    values: Mapping[str, Any], content: Path | None
) -> tuple[bool, VideoConfig | None, list[str]]:
    """Whether a row is a clip (its content a video file or a folder of frames), its clip
    settings, and what is wrong with them; an image row may not set the clip columns."""
    given = [k for k in VIDEO_PARAMS if values.get(k) not in (None, "")]
    if content is None or not is_clip(content):
        if given:
            return (
                False,
                None,
                [
                    f"{', '.join(given)}: only for a video row (content a video "
                    "file or a folder of frames)"
                ],
            )
        return False, None, []
    if not content.exists():
        return True, None, [f"content {content}: no such video file or folder of frames"]
    try:
        return True, video_config(values), []
    except NstError as err:
        return True, None, [str(err)]


@dataclass(frozen=True)
class _RowPaths:
    """A row's files, resolved against the manifest's folder (None where not given)."""

    content: Path | None
    styles: tuple[Path, ...]
    output: Path | None


def _path(value: Any, base: Path) -> Path | None:
    return base / Path(value).expanduser() if isinstance(value, str) and value else None


def _row_job(
    line: int,
    values: Mapping[str, Any],
    base: Path,
    defaults: Mapping[str, Any],
    checker: _Checker,
) -> tuple[PlannedJob | None, list[str]]:
    """A row as a job, or the problems that keep it from being one."""
    problems: list[str] = []
    known = set(parameter_names()) | {"preset"}  # unknown columns are reported once, for line 1
    params = {k: v for k, v in values.items() if k in known}
    params = resolve_parameter_paths(params, base)
    try:
        styles_raw = split_styles(values.get("style"))
    except ConfigError as err:
        problems.append(str(err))
        styles_raw = []
    raw = {"styles": STYLE_SEPARATOR.join(styles_raw)}
    for key in ("content", "output"):
        value = values.get(key)
        if value in (None, ""):
            problems.append(f"{key}: missing")
        elif not isinstance(value, str):
            problems.append(f"{key}: expected a path, not {value!r}")
        else:
            raw[key] = value
    if not styles_raw:
        problems.append("style: missing (one path, or several separated by ';')")
    paths = _row_paths(raw, base)
    clip, video, clip_problems = _clip_row(values, paths.content)
    problems += clip_problems
    try:
        config, outputs = configs_from_params(params, defaults)
    except NstError as err:
        settings_problem = str(err)
        max_pixels = None
    else:
        settings_problem = ""
        max_pixels = config.max_pixels
    for image in [*([] if clip else [paths.content]), *paths.styles]:
        if image is not None and (message := checker.image(image, max_pixels)):
            problems.append(message)
    if paths.output is not None and (message := _output_problem(paths.output, clip)):
        if not clip and is_video_path(paths.output):
            message = (
                f"output {paths.output} is a video: its content must be a video file "
                "or a folder of frames"
            )
        problems.append(message)
    if settings_problem:
        return None, [*problems, settings_problem]
    n_styles = len(paths.styles)
    if config.style_blend is not None and n_styles and len(config.style_blend) != n_styles:
        problems.append(f"style_blend has {len(config.style_blend)} weights for {n_styles} styles")
    init = Path(config.init)
    if config.init not in INIT_KEYWORDS and (message := checker.image(init, max_pixels)):
        problems.append(f"init: {message}")
    if message := checker.device(config.model.device):
        problems.append(message)
    if config.model.weights not in NAMED_SOURCES:
        try:
            source = resolve_source(config.model.weights)
            if source.path is not None and not source.path.is_file():
                problems.append(f"weights file {source.path} does not exist")
        except NstError as err:
            problems.append(str(err))
    if problems or paths.content is None or paths.output is None:
        return None, problems
    try:  # an image too small or elongated for the network at some pyramid level
        if not clip:  # (a clip's frames are checked when it is read)
            sizes = [checker.size(p) for p in (paths.content, *paths.styles)]
            check_fits(config, resized_shape(sizes[0], config.size), sizes[1:])
    except NstError as err:
        return None, [str(err)]
    name = str(values.get("name") or f"line {line}")
    job = Job(paths.content, paths.styles, paths.output, config, outputs, name, video)
    return PlannedJob(line, job, raw), []


def _row_paths(values: Mapping[str, Any], base: Path) -> _RowPaths:
    """``values`` as a CSV or JSONL row, or as PlannedJob.raw (styles already joined by ';')."""
    try:
        styles = split_styles(values.get("style", values.get("styles")))
    except ConfigError:
        styles = []
    found = (_path(s, base) for s in styles)
    return _RowPaths(
        _path(values.get("content"), base),
        tuple(p for p in found if p is not None),
        _path(values.get("output"), base),
    )


def _clashes(
    rows: Sequence[tuple[int, _RowPaths]], reserved: Mapping[tuple[object, ...], str]
) -> list[tuple[int, str]]:
    """Outputs that two rows share (also through their sidecars: out.png and out.jpg share
    out.json), that overwrite an input, or that land on a report file."""
    problems: list[tuple[int, str]] = []
    inputs: dict[tuple[object, ...], int] = {}
    for line, paths in rows:
        for path in (paths.content, *paths.styles):
            if path is not None:
                inputs.setdefault(file_identity(path), line)
    claimed: dict[tuple[object, ...], int] = {}
    for line, paths in rows:
        if paths.output is None:
            continue
        for path in (paths.output, sidecar_path(paths.output)):
            real = file_identity(path)  # also through another spelling or a hard link
            if real in claimed and claimed[real] != line:
                problems.append((line, f"output {path} is also written by line {claimed[real]}"))
            elif real in inputs:
                problems.append(
                    (line, f"output {path} would overwrite an input of line {inputs[real]}")
                )
            elif real in reserved:
                problems.append((line, f"output {path} would overwrite {reserved[real]}"))
            claimed.setdefault(real, line)
    return problems


def report_paths(manifest: Path, config: ManifestConfig) -> tuple[Path, Path]:
    """Where the report goes: named after the manifest (``jobs.csv`` -> ``jobs.report.json`` and
    ``jobs.report.csv``), so two manifests in one folder keep their own; shards get their own
    (``jobs.report.shard-0-of-4.json``) so they never collide."""
    folder = config.report_dir or manifest.parent
    stem = f"{manifest.stem}.report"
    if config.shard:
        stem += f".shard-{config.shard.index}-of-{config.shard.count}"
    return folder / f"{stem}.json", folder / f"{stem}.csv"


def plan_manifest(
    path: Path, config: ManifestConfig = ManifestConfig(), check_devices: bool = True
) -> Plan:
    """Read and check every row; this shard's jobs, or a ManifestError listing every problem.
    ``check_devices=False`` when the jobs run elsewhere (a Ray worker may have the GPU we lack)."""
    path = Path(path).absolute()
    problems: list[tuple[int | None, str]] = []
    defaults: dict[str, Any] = {}
    if config.config_file is not None:
        try:
            defaults.update(load_config_file(Path(config.config_file)))
        except ConfigError as err:
            problems.append((None, str(err)))
    defaults.update({k: v for k, v in config.defaults.items() if v is not None})
    try:
        configs_from_params({}, defaults)
    except NstError as err:
        problems.append((None, f"defaults (command line or --config): {err}"))
    if problems:
        raise ManifestError(str(path), problems)
    rows, problems = read_manifest(path)
    if not rows and not problems:
        problems.append((None, "the manifest has no rows"))
    checker = _Checker(check_devices)
    jobs: list[PlannedJob] = []
    for line, values in rows:
        planned, row_problems = _row_job(line, values, path.parent, defaults, checker)
        problems += [(line, message) for message in row_problems]
        if planned is not None:
            jobs.append(planned)
    reserved = {file_identity(p): "a report file" for p in report_paths(path, config)}
    problems += _clashes(
        [(line, _row_paths(values, path.parent)) for line, values in rows], reserved
    )
    if problems:
        # Stable: a line's own problems first, then its clashes with other lines.
        raise ManifestError(str(path), sorted(problems, key=lambda p: p[0] or 0))
    mine = [p for k, p in enumerate(jobs) if config.shard is None or config.shard.takes(k)]
    if not config.force:
        mine = [dataclasses.replace(p, done=is_done(p.job)) for p in mine]
    return Plan(path, len(jobs), tuple(mine), config.shard)
