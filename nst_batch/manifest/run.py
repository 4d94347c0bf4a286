"""Running a planned manifest: this shard's jobs that are not done, then the report.

Jobs run through the batch runner :func:`nst_batch.jobs.run.run_batched` (the one ``watch``
uses), locally by default or through another runner such as
:func:`nst_batch.distributed.run_on_ray`.
A failed job is a report row, never the end of the run; Ctrl-C ends it with a report of what
completed. Progress goes to :class:`RunCallbacks`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nst_batch.engine.model import resolve_device
from nst_batch.engine.optimize import Progress
from nst_batch.images import write_atomic
from nst_batch.jobs.inputs import Job
from nst_batch.jobs.run import BatchHooks, JobEnd, run_batched
from nst_batch.jobs.sidecar import Sidecar, read_sidecar, sidecar_path
from nst_batch.jobs.video import clip_figures
from nst_batch.manifest.plan import (
    STATUSES,
    JobOutcome,
    ManifestConfig,
    Plan,
    PlannedJob,
    plan_manifest,
    report_paths,
)
from nst_batch.manifest.shard import Shard
from nst_batch.pool import ModelPool
from nst_batch.video.run import VideoResult


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

    def end(self, outcome: JobOutcome) -> None:
        self.ended[outcome.line] = outcome
        if self.callbacks.end:
            self.callbacks.end(outcome)


# A way to run planned jobs, reporting each one's start and outcome to the events.
Runner = Callable[[Sequence[PlannedJob], ManifestConfig, JobEvents], None]


def _figures(sidecar: Sidecar) -> dict[str, Any]:
    """A report row's iterations, speed, losses and device, from a job's sidecar."""
    steps, seconds = sidecar.steps_completed, sidecar.optimize_seconds or 0.0
    final = sidecar.final_loss
    return {
        "converged": sidecar.converged,
        "iterations": steps,
        "iterations_per_s": round(steps / seconds, 3) if seconds > 0 else None,
        "loss": final.total,
        "content_loss": final.content,
        "style_loss": final.style,
        "tv_loss": final.tv,
        "device": sidecar.device,
    }


def outcome_of(planned: PlannedJob, end: JobEnd) -> JobOutcome:
    """A job's report row from how it ended."""
    seconds = round(end.seconds, 3)
    if end.result is None:
        return planned.outcome("failed", end.reason, seconds=seconds)
    if isinstance(end.result, VideoResult):  # a clip: figures over all its frames
        return planned.outcome("done", seconds=seconds, **clip_figures(end.result.record))
    sidecar = end.result.sidecar
    return planned.outcome("done", sidecar.convergence, seconds=seconds, **_figures(sidecar))


def skipped_outcome(planned: PlannedJob) -> JobOutcome:
    """A job already done: its figures (the run that made it) carried over from its sidecar."""
    if planned.job.video is not None:
        try:
            record = json.loads(sidecar_path(planned.job.output).read_text())
            figures = clip_figures(record) | {"seconds": record.get("wall_seconds")}
        except (OSError, ValueError, TypeError, AttributeError):
            figures = {}
        return planned.outcome("skipped", "already done", **figures)
    sidecar = read_sidecar(planned.job.output)
    if sidecar is None:  # a sidecar from an older version: the row says skipped, without figures
        return planned.outcome("skipped", "already done")
    figures = _figures(sidecar)
    return planned.outcome("skipped", "already done", seconds=sidecar.wall_seconds, **figures)


def _hooks(planned: Sequence[PlannedJob], events: JobEvents) -> BatchHooks:
    """The batch runner's hooks, reporting by manifest row."""
    by_job = {id(p.job): p for p in planned}
    step = events.callbacks.step

    def start(jobs: Sequence[Job]) -> None:
        for job in jobs:
            events.start(by_job[id(job)])

    def progress(job: Job, p: Progress) -> None:
        if step is not None:
            step(by_job[id(job)], p)

    def end(job_end: JobEnd) -> None:
        events.end(outcome_of(by_job[id(job_end.job)], job_end))

    return BatchHooks(start=start, step=progress, end=end)


def execute(planned: PlannedJob, models: ModelPool) -> JobOutcome:
    """Run one job; a failure is returned as its outcome, so one bad job never stops the rest.
    KeyboardInterrupt propagates (nothing has then been written for this job)."""
    (end,) = run_batched([planned.job], models, 1)
    return outcome_of(planned, end)


def run_locally(jobs: Sequence[PlannedJob], config: ManifestConfig, events: JobEvents) -> None:
    """The default runner: this process, one model pool, batches of ``config.batch_size``."""
    models = ModelPool(config.check_onnx)
    if config.check_onnx is not None:  # fail on a broken engine before the first job
        for model_config in dict.fromkeys(p.job.config.model for p in jobs):
            models.check(model_config, resolve_device(model_config.device))
    run_batched([p.job for p in jobs], models, config.batch_size, _hooks(jobs, events))


def _remove_stale_temp_files(jobs: Sequence[PlannedJob]) -> None:
    """A run killed mid-write leaves write_atomic's temp file (``.NAME.*.tmp``): tidy them."""
    for planned in jobs:
        for path in (planned.job.output, sidecar_path(planned.job.output)):
            if path.parent.is_dir():
                for stale in path.parent.glob(f".{path.name}.*.tmp"):
                    stale.unlink(missing_ok=True)


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
    runner: Runner | None = None,
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
    plan = plan_manifest(path, config, check_devices=runner is None)
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
        (runner or run_locally)(todo, config, events)
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
