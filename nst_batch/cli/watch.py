"""The daemon: ``watch`` an inbox, and its ``status`` for health checks."""

from __future__ import annotations

from pathlib import Path

import typer

from nst_batch.cli import options as opt
from nst_batch.cli.common import fail, mapped_errors


@mapped_errors()
def watch_command(
    inbox: Path = typer.Argument(..., help="Folder to watch for drops (see README: Watch folder)."),
    outbox: Path | None = typer.Option(None, help="Where results go (default: INBOX/../outbox)."),
    state: Path | None = typer.Option(
        None, help="Parent of work/, done/, failed/ (inbox's filesystem) (default: INBOX/..)."
    ),
    poll: bool = typer.Option(
        False, "--poll", help="Poll instead of inotify (NFS, SMB, Docker Desktop mounts)."
    ),
    settle: float = typer.Option(2.0, help="Seconds a drop's files must stay unchanged."),
    rescan: float = typer.Option(5.0, help="Seconds between scans when no event arrives."),
    once: bool = typer.Option(False, "--once", help="Process what is complete now, then exit."),
    worker_id: str | None = typer.Option(None, help="Name of this worker (default: hostname-pid)."),
    max_edge: int = typer.Option(8192, help="Refuse input images (and sizes) over this edge."),
    max_retries: int = typer.Option(2, help="Retries of a job that crashed (not bad input)."),
    grace: float = typer.Option(8.0, help="Seconds the running job may finish after SIGTERM."),
    status_interval: float = typer.Option(5.0, help="Seconds between status.json writes."),
    stale_after: float = typer.Option(60.0, help="A worker silent this long is dead."),
    batch_size: int = typer.Option(
        1, help="Jobs claimed at once; those of one size and settings optimize as one batch."
    ),
    output_format: str = typer.Option("png", "--format", help="Output format: png, jpg, webp."),
    log_json: bool = typer.Option(False, "--log-json", help="Log JSON lines instead of text."),
    preset: opt.DefaultPreset = None,
    size: opt.DefaultSize = None,
    steps: opt.DefaultSteps = None,
    style_weight: opt.DefaultStyleWeight = None,
    line_search: opt.LineSearch = None,
    device: opt.Device = None,
    weights: opt.Weights = None,
    max_memory: opt.MaxMemory = None,
    tile: opt.Tile = None,
    targets_backend: opt.Targets = None,
    params: list[str] | None = typer.Option(
        None, "--param", help="Any other default parameter as KEY=VALUE (repeatable)."
    ),
    check_onnx: Path | None = typer.Option(
        None, help="An `nst-batch export`: refuse to start if the engine disagrees with it."
    ),
) -> None:
    """Watch INBOX: each dropped pair (NAME.content.EXT + NAME.style.EXT) or job folder becomes
    OUTBOX/NAME.png; inputs move to done/ or failed/ (with NAME.error.json)."""
    flags = opt.parameters(locals())  # the default stylize parameters given as flags
    from nst_batch.engine.model import resolve_device
    from nst_batch.params import configs_from_params
    from nst_batch.pool import ModelPool
    from nst_batch.watcher import logs
    from nst_batch.watcher.config import make_config
    from nst_batch.watcher.daemon import watch

    defaults = opt.batch_defaults(flags, params, "--param")
    settings, _ = configs_from_params({}, defaults)  # bad defaults fail now, not on every job
    resolve_device(settings.model.device)  # as does a device this machine lacks
    config = make_config(
        inbox,
        defaults,
        outbox=outbox,
        state=state,
        worker_id=worker_id,
        settle=settle,
        rescan=rescan,
        poll=poll,
        once=once,
        max_edge=max_edge,
        max_retries=max_retries,
        grace=grace,
        status_interval=status_interval,
        stale_after=stale_after,
        batch_size=batch_size,
        output_format="." + output_format.lower().lstrip("."),
    )
    raise typer.Exit(watch(config, ModelPool(check_onnx), logs.configure(log_json)))


@mapped_errors()
def status_command(
    inbox: Path = typer.Argument(..., help="The inbox a daemon watches."),
    max_age: float | None = typer.Option(
        None, help="Exit 1 unless a worker reported within this many seconds."
    ),
    local: bool = typer.Option(
        False, "--local", help="Only workers on this host (a container's own health)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print status.json as it is."),
) -> None:
    """Print the daemons' status.json; exit 1 if it is missing or no worker is live (stopped,
    dead, or silent past --max-age): for HEALTHCHECK."""
    import json
    import time

    from nst_batch.watcher.config import STATUS_NAME
    from nst_batch.watcher.status import judged, live_workers, read_summary

    summary = read_summary(inbox / STATUS_NAME)
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        now = time.time()
        for w in map(judged, summary["workers"]):
            current = w.get("current") or "-"
            state = f"dead ({w.get('dead_reason')})" if w.get("state") == "dead" else w.get("state")
            print(
                f"{w.get('worker_id')}: {state}, updated {now - w.get('updated', 0):.0f}s "
                f"ago, queue {w.get('queue_depth')}, current {current}, done {w.get('done')}, "
                f"skipped {w.get('skipped')}, failed {w.get('failed')}, "
                f"last error {w.get('last_error') or '-'}"
            )
        if not summary["workers"]:
            print("no workers")
        print(f"{len(live_workers(summary))} of {len(summary['workers'])} workers live")
        for job in summary.get("incomplete", []):  # settled in the inbox, a part missing
            missing, files = ", ".join(job["missing"]), ", ".join(job["files"])
            print(f"incomplete job {job['job']}: no {missing} ({files})")
    if not live_workers(summary, max_age, local):
        within = "" if max_age is None else f" reported in the last {max_age:g} s"
        raise fail(f"no live {'local ' if local else ''}worker{within}")
