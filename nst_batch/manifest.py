"""Manifest batch runs: many stylization jobs from a CSV or JSON Lines file.

A manifest row names a ``content`` image, one or more ``style`` images and an ``output``; any
stylize parameter (:func:`nst_batch.jobs.parameter_names`) may be given per row. Settings layer as
row > ``ManifestConfig.defaults`` (the command line) > ``ManifestConfig.config_file`` > preset.
Every row is checked before any work starts, so a typo on line 900 is found in a second, not after
hours. Finished jobs (same parameter hash in the sidecar) are skipped, so an interrupted or killed
run resumes where it stopped; outputs are written atomically, so none is ever half written.

The run is shardable (row k goes to shard k mod N) for Kubernetes Indexed Jobs and Slurm arrays,
and ends with a report, ``MANIFEST.report.json`` + ``.csv``. Progress goes to :class:`RunCallbacks`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch

from nst_batch.engine.optimize import Progress
from nst_batch.engine.weights import resolve_source
from nst_batch.errors import ConfigError, ManifestError, NstError
from nst_batch.images import check_output_path, file_identity, open_rgb, resized_shape, write_atomic
from nst_batch.jobs import (
    Job,
    batch_groups,
    is_done,
    job_settings,
    parameter_names,
    run_batch,
    run_job,
)
from nst_batch.presets import unknown_names
from nst_batch.stylize import (
    ModelPool,
    StylizeResult,
    check_fits,
    resolve_device,
    sidecar_path,
)

ROW_KEYS = ("content", "style", "output", "name")  # the non-parameter columns
STYLE_SEPARATOR = ";"  # several style images in one CSV cell / JSON string: "a.jpg;b.jpg"
MANIFEST_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
Status = Literal["done", "failed", "skipped", "interrupted", "would-run"]
STATUSES: tuple[Status, ...] = ("done", "failed", "skipped", "interrupted", "would-run")


@dataclass(frozen=True)
class Shard:
    """This process's part of the manifest: rows k with k mod count == index."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ConfigError(
                f"shard {self.index}/{self.count}: need 0 <= index < count (count >= 1)"
            )

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def takes(self, k: int) -> bool:
        return k % self.count == self.index


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
    ray_address: str | None = None  # with ``ray``: "" or None = a local cluster, else its address
    ray: bool = False  # run the jobs over a pool of Ray actors (nst_batch.distributed)

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

    @property
    def group(self) -> tuple[Any, ...]:
        """Jobs with the same key share a model and could run as one batch."""
        c = self.job.config
        return (c.size, c.loss.layers, c.model)

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


@dataclass(frozen=True)
class Report:
    manifest: Path
    shard: Shard | None
    rows: tuple[JobOutcome, ...]  # by manifest line
    started: str
    seconds: float
    interrupted: bool = False
    dry_run: bool = False
    files: tuple[Path, ...] = ()  # the report files written

    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.rows) for s in STATUSES}

    @property
    def failed(self) -> bool:
        return any(r.status == "failed" for r in self.rows)

    def to_json(self) -> dict[str, Any]:
        return {
            "manifest": str(self.manifest),
            "shard": str(self.shard) if self.shard else None,
            "started": self.started,
            "seconds": round(self.seconds, 3),
            "interrupted": self.interrupted,
            "counts": self.counts(),
            "jobs": [dataclasses.asdict(r) for r in self.rows],
        }


@dataclass(frozen=True)
class RunCallbacks:
    """How a run reports progress; every callback is optional. Called from the running thread."""

    plan: Callable[[Plan], None] | None = None  # after validation, before any job
    start: Callable[[PlannedJob], None] | None = None
    step: Callable[[PlannedJob, Progress], None] | None = None
    end: Callable[[JobOutcome], None] | None = None  # also for skipped jobs


# --- reading ---------------------------------------------------------------------------------


def _read_csv(text: str) -> tuple[list[tuple[int, dict[str, Any]]], list[tuple[int | None, str]]]:
    rows: list[tuple[int, dict[str, Any]]] = []
    problems: list[tuple[int | None, str]] = []
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = [(name or "").strip() for name in reader.fieldnames or []]
    except csv.Error as err:
        return [], [(1, f"cannot read the CSV header ({err})")]
    if not header:
        return [], [(None, "the manifest is empty (a CSV needs a header line)")]
    reader.fieldnames = header
    duplicated = sorted({h for h in header if header.count(h) > 1 and h})
    if duplicated:
        problems.append((1, f"column(s) {', '.join(duplicated)} appear more than once"))
    unknown = _unknown_keys(h for h in header if h)
    if unknown:
        problems.append((1, unknown))
    try:
        for record in reader:
            line = reader.line_num  # where the record ends: its line unless a cell spans lines
            extra = record.pop(None, None)  # type: ignore[call-overload]
            if extra:
                problems.append((line, f"{len(extra)} more cell(s) than the header's columns"))
            values = {k: (v or "").strip() for k, v in record.items() if k}
            if any(values.values()):  # a row of empty cells is a blank line
                rows.append((line, values))
    except csv.Error as err:
        problems.append((reader.line_num, f"cannot read CSV ({err})"))
    return rows, problems


def _read_jsonl(
    text: str,
) -> tuple[list[tuple[int, dict[str, Any]]], list[tuple[int | None, str]]]:
    rows: list[tuple[int, dict[str, Any]]] = []
    problems: list[tuple[int | None, str]] = []
    for line, item in enumerate(text.splitlines(), start=1):
        if not item.strip():
            continue
        try:
            value = json.loads(item)
        except ValueError as err:
            problems.append((line, f"not valid JSON ({err})"))
            continue
        if not isinstance(value, dict):
            problems.append((line, f"expected a JSON object, not {type(value).__name__}"))
            continue
        unknown = _unknown_keys(value)
        if unknown:
            problems.append((line, unknown))
            continue
        rows.append((line, value))
    return rows, problems


def _unknown_keys(keys: Iterable[str]) -> str:
    known = set(ROW_KEYS) | set(parameter_names()) | {"preset"}
    unknown = set(keys) - known
    return unknown_names(unknown, known, "column") if unknown else ""


def read_manifest(
    path: Path,
) -> tuple[list[tuple[int, dict[str, Any]]], list[tuple[int | None, str]]]:
    """The rows of a manifest as (line, values), and the problems found reading it."""
    kind = MANIFEST_FORMATS.get(path.suffix.lower())
    if kind is None:
        formats = ", ".join(MANIFEST_FORMATS)
        raise ManifestError(str(path), [(None, f"unknown manifest format; use {formats}")])
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a spreadsheet's byte order mark
    except (OSError, UnicodeDecodeError) as err:
        raise ManifestError(str(path), [(None, f"cannot read the manifest ({err})")]) from None
    return _read_csv(text) if kind == "csv" else _read_jsonl(text)


def load_config_file(path: Path) -> dict[str, Any]:
    """Flat stylize parameters from a JSON object or a TOML table; paths relative to its folder."""
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                raise ConfigError(f"{path}: TOML needs Python 3.11+; use JSON") from None
            values: Any = tomllib.loads(path.read_text())
        else:
            values = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # tomllib.TOMLDecodeError is a ValueError
        raise ConfigError(f"config file {path}: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path}: expected an object of stylize parameters")
    unknown = set(values) - set(parameter_names()) - {"preset"}
    if unknown:
        raise ConfigError(f"config file {path}: {unknown_names(unknown, parameter_names())}")
    return _resolve_parameter_paths(values, path.parent)


def _resolve_parameter_paths(params: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """``init`` and ``weights`` may name files: relative ones are relative to ``base``."""
    resolved = dict(params)
    for key, keywords in (("init", ("content", "noise")), ("weights", ("bundled", "torchvision"))):
        value = resolved.get(key)
        if isinstance(value, str) and value.strip() and value.strip() not in keywords:
            resolved[key] = str(base / Path(value.strip()).expanduser())
    return resolved


def _styles(value: Any) -> list[str]:
    """``"a.jpg;b.jpg"`` or ``["a.jpg", "b.jpg"]`` -> the style paths as written."""
    items = value if isinstance(value, list) else [value] if value not in (None, "") else []
    found: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"style: expected a path or a list of paths, not {item!r}")
        found += [part.strip() for part in item.split(STYLE_SEPARATOR) if part.strip()]
    return found


# --- validation ------------------------------------------------------------------------------


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


def _output_problem(output: Path) -> str:
    try:
        check_output_path(output)  # missing folders are created; a file in the way is not
    except NstError as err:
        return f"output {err}"
    return ""


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
    params = _resolve_parameter_paths(params, base)
    try:
        styles_raw = _styles(values.get("style"))
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
    try:
        config, outputs = job_settings(params, defaults)
    except NstError as err:
        settings_problem = str(err)
        max_pixels = None
    else:
        settings_problem = ""
        max_pixels = config.max_pixels
    for image in [paths.content, *paths.styles]:
        if image is not None and (message := checker.image(image, max_pixels)):
            problems.append(message)
    if paths.output is not None and (message := _output_problem(paths.output)):
        problems.append(message)
    if settings_problem:
        return None, [*problems, settings_problem]
    n_styles = len(paths.styles)
    if config.style_blend is not None and n_styles and len(config.style_blend) != n_styles:
        problems.append(f"style_blend has {len(config.style_blend)} weights for {n_styles} styles")
    init = Path(config.init)
    if config.init not in ("content", "noise") and (message := checker.image(init, max_pixels)):
        problems.append(f"init: {message}")
    if message := checker.device(config.model.device):
        problems.append(message)
    if config.model.weights not in ("bundled", "torchvision"):
        try:
            source = resolve_source(config.model.weights)
            if source.path is not None and not source.path.is_file():
                problems.append(f"weights file {source.path} does not exist")
        except NstError as err:
            problems.append(str(err))
    if problems or paths.content is None or paths.output is None:
        return None, problems
    try:  # an image too small or elongated for the network at some pyramid level
        sizes = [checker.size(p) for p in (paths.content, *paths.styles)]
        check_fits(config, resized_shape(sizes[0], config.size), sizes[1:])
    except NstError as err:
        return None, [str(err)]
    name = str(values.get("name") or f"line {line}")
    job = Job(paths.content, paths.styles, paths.output, config, outputs, name=name)
    return PlannedJob(line, job, raw), []


def _row_paths(values: Mapping[str, Any], base: Path) -> _RowPaths:
    """``values`` as a CSV or JSONL row, or as PlannedJob.raw (styles already joined by ';')."""
    try:
        styles = _styles(values.get("style", values.get("styles")))
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


def plan_manifest(path: Path, config: ManifestConfig = ManifestConfig()) -> Plan:
    """Read and check every row; this shard's jobs, or a ManifestError listing every problem."""
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
        job_settings({}, defaults)
    except NstError as err:
        problems.append((None, f"defaults (command line or --config): {err}"))
    if problems:
        raise ManifestError(str(path), problems)
    rows, problems = read_manifest(path)
    if not rows and not problems:
        problems.append((None, "the manifest has no rows"))
    checker = _Checker(check_device=not config.ray)
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


# --- sharding --------------------------------------------------------------------------------


def parse_shard(text: str) -> Shard:
    """``"I/N"`` -> Shard(I, N)."""
    index, sep, count = text.partition("/")
    try:
        if not sep:
            raise ValueError
        return Shard(int(index), int(count))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None


def shard_from_env(shard: str | None, shards: int | None, env: Mapping[str, str]) -> Shard | None:
    """This process's shard: ``--shard I/N``; or ``--shards N`` with the index from a Kubernetes
    Indexed Job (``JOB_COMPLETION_INDEX``) or a Slurm array; or a Slurm array by itself."""
    if shard is not None:
        found = parse_shard(shard)
        if shards is not None and shards != found.count:
            raise ConfigError(f"--shard {shard} and --shards {shards} disagree")
        return found
    slurm = _slurm_index(env)
    if shards is not None:
        if shards < 1:
            raise ConfigError(f"--shards must be at least 1, not {shards}")
        if (value := env.get("JOB_COMPLETION_INDEX")) is not None:
            index = _env_int("JOB_COMPLETION_INDEX", value)
        elif slurm is not None:
            index = slurm
        else:
            raise ConfigError(
                "--shards N takes the shard index from JOB_COMPLETION_INDEX (Kubernetes Indexed "
                "Job) or SLURM_ARRAY_TASK_ID; neither is set (use --shard I/N)"
            )
        return Shard(index, shards)
    if slurm is not None and env.get("SLURM_ARRAY_TASK_COUNT"):
        return Shard(slurm, _env_int("SLURM_ARRAY_TASK_COUNT", env["SLURM_ARRAY_TASK_COUNT"]))
    return None


def _env_int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a whole number") from None


def _slurm_index(env: Mapping[str, str]) -> int | None:
    """The 0-based position in a Slurm array (--array=1-8 or 0-14:2 count from their start)."""
    if "SLURM_ARRAY_TASK_ID" not in env:
        return None
    task = _env_int("SLURM_ARRAY_TASK_ID", env["SLURM_ARRAY_TASK_ID"])
    first = _env_int("SLURM_ARRAY_TASK_MIN", env.get("SLURM_ARRAY_TASK_MIN", "0"))
    step = _env_int("SLURM_ARRAY_TASK_STEP", env.get("SLURM_ARRAY_TASK_STEP", "1")) or 1
    return (task - first) // step


# --- running ---------------------------------------------------------------------------------


class JobEvents:
    """What the runners report to: the user's callbacks, plus a record of which jobs started and
    ended (so an interrupted run knows which job it stopped in)."""

    def __init__(self, callbacks: RunCallbacks) -> None:
        self.callbacks = callbacks
        self.started: set[int] = set()
        self.ended: dict[int, JobOutcome] = {}

    def start(self, planned: PlannedJob) -> None:
        self.started.add(planned.line)
        if self.callbacks.start:
            self.callbacks.start(planned)

    def step(self, planned: PlannedJob) -> Callable[[Progress], None] | None:
        step = self.callbacks.step
        if step is None:
            return None
        return lambda p: step(planned, p)

    def end(self, outcome: JobOutcome) -> None:
        self.ended[outcome.line] = outcome
        if self.callbacks.end:
            self.callbacks.end(outcome)


def _figures(meta: Mapping[str, Any]) -> dict[str, Any]:
    """A report row's iterations, speed, losses and device, from a job's sidecar metadata."""
    steps = int(meta["steps_completed"])
    optimize_seconds = float(meta["optimize_seconds"] or 0.0)
    final = meta["final_loss"]
    return {
        "converged": bool(meta.get("converged", True)),  # sidecars before 0.2 have no flag
        "iterations": steps,
        "iterations_per_s": round(steps / optimize_seconds, 3) if optimize_seconds > 0 else None,
        "loss": final["total"],
        "content_loss": final["content"],
        "style_loss": final["style"],
        "tv_loss": final["tv"],
        "device": str(meta["device"]),
    }


def outcome_of(planned: PlannedJob, result: StylizeResult, seconds: float) -> JobOutcome:
    meta = result.metadata
    reason = meta.get("convergence", "")  # why an optimization is judged not converged
    return planned.outcome("done", reason, seconds=round(seconds, 3), **_figures(meta))


def skipped_outcome(planned: PlannedJob) -> JobOutcome:
    """A job already done: its figures (the run that made it) carried over from its sidecar."""
    try:
        meta = json.loads(sidecar_path(planned.job.output).read_text())
        figures = {"seconds": meta.get("wall_seconds"), **_figures(meta)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        figures = {}  # a sidecar from an older version: the row says skipped, without figures
    return planned.outcome("skipped", "already done", **figures)


def execute(
    planned: PlannedJob, models: ModelPool, progress: Callable[[Progress], None] | None = None
) -> JobOutcome:
    """Run one job; a failure is returned as its outcome, so one bad job never stops the rest.
    KeyboardInterrupt propagates (run_job has then written nothing for this job)."""
    start = time.perf_counter()
    try:
        planned.job.output.parent.mkdir(parents=True, exist_ok=True)
        result = run_job(planned.job, models, progress)
    except (NstError, RuntimeError, OSError) as err:  # RuntimeError: CUDA out of memory, too
        if planned.job.config.model.device != "cpu" and torch.cuda.is_available():
            torch.cuda.empty_cache()  # give the failed job's memory back to the next one
        reason = str(err) if isinstance(err, NstError) else f"{type(err).__name__}: {err}"
        return planned.outcome("failed", reason, seconds=round(time.perf_counter() - start, 3))
    return outcome_of(planned, result, time.perf_counter() - start)


def _run_group(
    group: Sequence[PlannedJob], models: ModelPool, batch_size: int, events: JobEvents
) -> list[JobOutcome]:
    """Run jobs that share a size, layer set and device. With ``batch_size`` > 1, those that can
    share a batch (:func:`~nst_batch.jobs.batch_groups`) are optimized together; a batch that
    fails is rerun job by job, so one bad job fails alone."""
    outcomes: list[JobOutcome] = []
    planned = {id(p.job): p for p in group}
    for batch in batch_groups([p.job for p in group], batch_size):
        members = [planned[id(job)] for job in batch]
        if len(members) > 1:
            done = _execute_batch(members, models, events)
            if done is not None:
                outcomes += done
                continue
        for member in members:
            events.start(member)
            outcome = execute(member, models, events.step(member))
            events.end(outcome)
            outcomes.append(outcome)
    return outcomes


def _execute_batch(
    members: Sequence[PlannedJob], models: ModelPool, events: JobEvents
) -> list[JobOutcome] | None:
    """Run jobs as one batch; their outcomes, or None when the batch failed (rerun them alone).
    KeyboardInterrupt propagates, with nothing written for any of them."""
    for member in members:
        events.start(member)
    steps = [events.step(member) for member in members]

    def progress(p: Progress) -> None:
        for i, step in enumerate(steps):
            if step is not None:
                step(p.job(i))

    start = time.perf_counter()
    try:
        for member in members:
            member.job.output.parent.mkdir(parents=True, exist_ok=True)
        results = run_batch([m.job for m in members], models, progress)
    except (NstError, RuntimeError, OSError):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None
    seconds = time.perf_counter() - start
    outcomes = [outcome_of(m, r, seconds) for m, r in zip(members, results, strict=True)]
    for outcome in outcomes:
        events.end(outcome)
    return outcomes


def _groups(jobs: Sequence[PlannedJob]) -> list[list[PlannedJob]]:
    """Jobs by group key, groups in order of first appearance, jobs in manifest order."""
    found: dict[tuple[Any, ...], list[PlannedJob]] = {}
    for planned in jobs:
        found.setdefault(planned.group, []).append(planned)
    return list(found.values())


def _remove_stale_temp_files(jobs: Sequence[PlannedJob]) -> None:
    """A run killed mid-write leaves write_atomic's temp file (``.NAME.*.tmp``): tidy them."""
    for planned in jobs:
        for path in (planned.job.output, sidecar_path(planned.job.output)):
            if path.parent.is_dir():
                for stale in path.parent.glob(f".{path.name}.*.tmp"):
                    stale.unlink(missing_ok=True)


def _run_local(jobs: Sequence[PlannedJob], config: ManifestConfig, events: JobEvents) -> None:
    models = ModelPool(config.check_onnx)
    if config.check_onnx is not None:  # fail on a broken engine before the first job
        for model_config in dict.fromkeys(p.job.config.model for p in jobs):
            models.check(model_config, resolve_device(model_config.device))
    for group in _groups(jobs):
        _run_group(group, models, config.batch_size, events)


def write_report(report: Report, paths: tuple[Path, Path]) -> None:
    """The report as JSON and CSV (:func:`report_paths`), each written atomically."""
    json_path, csv_path = paths
    json_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(json_path, json.dumps(report.to_json(), indent=2).encode() + b"\n")
    buffer = io.StringIO()
    columns = [f.name for f in dataclasses.fields(JobOutcome)]
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    for row in report.rows:
        writer.writerow({k: "" if v is None else v for k, v in dataclasses.asdict(row).items()})
    write_atomic(csv_path, buffer.getvalue().encode())


def run_manifest(
    path: Path,
    config: ManifestConfig = ManifestConfig(),
    progress: RunCallbacks | None = None,
) -> Report:
    """Validate every row, then run this shard's jobs that are not done yet; write the report.

    Raises ManifestError (every problem, with line numbers) before any work when a row is bad.
    A job that fails is recorded as failed and the others go on. On Ctrl-C (KeyboardInterrupt)
    the running job writes nothing and the report is written with what completed; the returned
    report then has ``interrupted`` set. With ``dry_run`` nothing is run or written: the report's
    rows say "would-run" or "skipped".
    """
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    clock = time.perf_counter()
    events = JobEvents(progress or RunCallbacks())
    plan = plan_manifest(path, config)
    if events.callbacks.plan:
        events.callbacks.plan(plan)

    def report(rows: Iterable[JobOutcome], interrupted: bool = False) -> Report:
        return Report(
            manifest=plan.manifest,
            shard=plan.shard,
            rows=tuple(sorted(rows, key=lambda r: r.line)),
            started=started,
            seconds=time.perf_counter() - clock,
            interrupted=interrupted,
            dry_run=config.dry_run,
        )

    skipped = [skipped_outcome(p) for p in plan.jobs if p.done]
    if config.dry_run:
        return report([*skipped, *(p.outcome("would-run") for p in plan.jobs if not p.done)])
    for outcome in skipped:
        events.end(outcome)
    todo = [p for p in plan.jobs if not p.done]
    _remove_stale_temp_files(todo)
    interrupted = False
    try:
        if config.ray:
            from nst_batch.distributed import run_on_ray

            run_on_ray(todo, config, events)
        else:
            _run_local(todo, config, events)
    except KeyboardInterrupt:
        interrupted = True
    rows = list(events.ended.values())
    for p in todo:
        if p.line not in events.ended:
            reason = "interrupted; nothing written" if p.line in events.started else "not started"
            rows.append(p.outcome("interrupted", reason))
    result = report(rows, interrupted)
    paths = report_paths(plan.manifest, config)
    write_report(result, paths)
    return dataclasses.replace(result, files=paths)
