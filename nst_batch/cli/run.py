"""``run``: every job of a manifest, with a progress display and a report table."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from nst_batch.cli import options as opt
from nst_batch.cli.common import (
    EXIT_INTERRUPTED,
    at,
    log_due,
    mapped_errors,
    optimization_failed,
    progress_bar,
    sigterm_as_ctrl_c,
    stderr,
    step_line,
    table_console,
)
from nst_batch.errors import ConfigError, ManifestError

if TYPE_CHECKING:
    from rich.progress import Progress
    from rich.table import Table

    from nst_batch.engine.optimize import Progress as Step
    from nst_batch.manifest import JobOutcome, Plan, PlannedJob, Report, RunCallbacks


def run_command(
    manifest: Path = typer.Argument(..., help="A .csv or .jsonl manifest of jobs."),
    config_file: Path | None = typer.Option(
        None, "--config", help="JSON or TOML file of default stylize parameters."
    ),
    preset: opt.DefaultPreset = None,
    size: opt.DefaultSize = None,
    steps: opt.DefaultSteps = None,
    style_weight: opt.DefaultStyleWeight = None,
    content_weight: opt.DefaultContentWeight = None,
    line_search: opt.LineSearch = None,
    device: opt.Device = None,
    weights: opt.Weights = None,
    max_memory: opt.MaxMemory = None,
    tile: opt.Tile = None,
    settings: list[str] | None = typer.Option(
        None, "--set", help="Any other default stylize parameter, KEY=VALUE (repeatable)."
    ),
    force: bool = typer.Option(False, "--force", help="Redo jobs that are already done."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and print the plan only."),
    shard: str | None = typer.Option(None, help="Run only shard I/N (rows k with k mod N = I)."),
    shards: int | None = typer.Option(
        None, help="N shards; the index from JOB_COMPLETION_INDEX or SLURM_ARRAY_TASK_ID."
    ),
    batch_size: int = typer.Option(
        1, min=1, help="Jobs of one size and settings optimized as one batch (pays on a GPU)."
    ),
    report_dir: Path | None = typer.Option(
        None, help="Folder for MANIFEST.report.json/.csv (default: the manifest's folder)."
    ),
    check_onnx: opt.CheckOnnx = None,
    ray: bool = typer.Option(False, "--ray", help="Run the jobs on Ray actors (extra `ray`)."),
    ray_address: str | None = typer.Option(
        None, help="Ray cluster to join (implies --ray) (default: a local one, or $RAY_ADDRESS)."
    ),
) -> None:
    """Run every job of MANIFEST: validated up front, resumable, shardable; writes a report."""
    flags = opt.parameters(locals())  # the default stylize parameters given as flags
    import os

    from nst_batch.distributed import run_on_ray
    from nst_batch.manifest import ManifestConfig, run_manifest, shard_from_env

    with mapped_errors(usage=(ConfigError,)):
        config = ManifestConfig(
            defaults=opt.batch_defaults(flags, settings, "--set"),
            config_file=config_file,
            force=force,
            dry_run=dry_run,
            shard=shard_from_env(shard, shards, os.environ),
            batch_size=batch_size,
            check_onnx=check_onnx,
            report_dir=report_dir,
            ray_address=ray_address,
        )
    console = stderr()
    nothing_ran = "interrupted before any job ran; nothing written"
    with (
        mapped_errors(usage=(ManifestError,), interrupted=nothing_ran),
        sigterm_as_ctrl_c(),
        _run_progress(console) as callbacks,
    ):
        runner = run_on_ray if ray or ray_address is not None else None
        report = run_manifest(manifest, config, None if dry_run else callbacks, runner)
    if dry_run:
        table_console().print(_report_table(report, f"plan for {manifest}"))
        counts = report.counts()
        print(f"{counts['would-run']} would run, {counts['skipped']} already done")
        return
    table_console(stderr=True).print(_report_table(report, f"{manifest}"))
    counts = report.counts()
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    console.print(f"{summary or 'no jobs'}; report: {', '.join(map(str, report.files))}")
    if report.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    if report.failed:
        raise typer.Exit(1)


@contextmanager
def _run_progress(console: Console) -> Iterator[RunCallbacks]:
    """A bar for the jobs (done/failed/skipped, ETA) and one for the current job's steps on a
    terminal; plain log lines otherwise."""
    from nst_batch.manifest import RunCallbacks

    counts: Counter[str] = Counter()
    if not console.is_terminal:
        yield RunCallbacks(**_log_lines(counts))
        return
    with progress_bar(console) as bar:
        yield RunCallbacks(**_bars(bar, counts))


def _log_lines(counts: Counter[str]) -> dict[str, Callable[..., None]]:
    """Run callbacks (plan, start, step, end) that print a line per job started and finished,
    and every tenth of its steps (or 5 s)."""
    total = 0

    def plan(p: Plan) -> None:
        nonlocal total
        total = len(p.jobs)
        shard = f" (shard {p.shard} of {p.rows} rows)" if p.shard else ""
        print(
            f"{total} jobs{shard}, {sum(j.done for j in p.jobs)} already done",
            file=sys.stderr,
            flush=True,
        )

    def start(j: PlannedJob) -> None:
        print(f"line {j.line}: {j.raw['output']} ...", file=sys.stderr, flush=True)

    due: dict[int, Callable[[Step], bool]] = {}

    def step(j: PlannedJob, p: Step) -> None:
        if due.setdefault(j.line, log_due(10))(p):
            print(f"  {step_line(p)}", file=sys.stderr, flush=True)

    def end(o: JobOutcome) -> None:
        counts[o.status] += 1
        reason = f": {o.reason}" if o.reason else ""
        if o.converged is False:
            reason = f": {optimization_failed(o.reason, markup=False)}"
        seconds = f" in {o.seconds:.1f}s" if o.seconds is not None else ""
        done = sum(counts.values())
        print(
            f"[{done}/{total}] line {o.line}: {o.status}{seconds}{reason}",
            file=sys.stderr,
            flush=True,
        )

    return {"plan": plan, "start": start, "step": step, "end": end}


def _bars(bar: Progress, counts: Counter[str]) -> dict[str, Callable[..., None]]:
    """Run callbacks (plan, start, step, end) that drive a bar for the jobs and one for the
    current job, on a terminal."""
    jobs = bar.add_task("jobs", total=None, info="validating")
    current = bar.add_task("", total=None, info="", visible=False)

    def plan(p: Plan) -> None:
        bar.update(jobs, total=len(p.jobs), info="")

    def start(j: PlannedJob) -> None:
        bar.reset(current, total=None, description=f"line {j.line}", info="", visible=True)

    def step(j: PlannedJob, p: Step) -> None:
        info = f"{j.raw['output']}{at(p)} loss {p.loss:.4g}"
        bar.update(current, completed=p.step, total=p.total, info=info)

    def end(o: JobOutcome) -> None:
        counts[o.status] += 1
        tally = ", ".join(f"{counts[s]} {s}" for s in ("done", "failed", "skipped") if counts[s])
        bar.update(jobs, advance=1, info=tally)
        if o.status == "failed":
            bar.console.print(f"[red]line {o.line} failed:[/] {o.reason}", soft_wrap=True)
        elif o.converged is False:
            bar.console.print(optimization_failed(o.reason, f"line {o.line}"), soft_wrap=True)

    return {"plan": plan, "start": start, "step": step, "end": end}


def _report_table(report: Report, title: str, limit: int = 100) -> Table:
    """The plan (dry run) or the outcome of each job; past ``limit`` rows only those that did not
    simply finish (report.csv has them all)."""
    from rich.table import Table

    rows = report.rows
    if len(rows) > limit:
        rows = tuple(r for r in rows if r.status not in ("done", "skipped"))
    colours = {"done": "green", "failed": "bold red", "interrupted": "yellow"}
    if report.dry_run:
        table = Table("line", "content", "styles", "output", "size", "steps", "status")
    else:
        table = Table("line", "output", "status", "seconds", "it/s", "loss", "reason")
    table.title = title
    for r in rows:
        status = f"[{colours.get(r.status, 'default')}]{r.status}[/]"
        if report.dry_run:
            table.add_row(
                str(r.line), r.content, r.styles, r.output, str(r.size), str(r.steps), status
            )
            continue
        table.add_row(
            str(r.line),
            r.output,
            status,
            f"{r.seconds:.1f}" if r.seconds is not None else "",
            f"{r.iterations_per_s:.2f}" if r.iterations_per_s is not None else "",
            f"{r.loss:.4g}" if r.loss is not None else "",
            r.reason,
        )
    return table
