"""What every command shares: consoles, the one place library errors become exit statuses,
progress output (a bar on a terminal, plain lines in a log) and SIGTERM handled as Ctrl-C."""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from nst_batch.errors import NstError

if TYPE_CHECKING:
    from nst_batch.engine.optimize import Progress as Step

EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM; the shell's convention for SIGINT
LOG_SECONDS = 5.0  # off a terminal, a progress line at least this often (besides every N steps)


def stderr() -> Console:
    return Console(stderr=True, highlight=False)


def table_console(stderr: bool = False) -> Console:
    """A console for tables: the terminal's width on a terminal; unlimited in a pipe or a log,
    so paths are printed whole rather than cut at 80 columns."""
    console = Console(stderr=stderr, highlight=False)
    return console if console.is_terminal else Console(stderr=stderr, highlight=False, width=10**4)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: MESSAGE`` on stderr; the caller raises the returned exit (status ``code``)."""
    stderr().print(f"[bold red]error:[/] {message}", soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def mapped_errors(
    usage: tuple[type[NstError], ...] = (), interrupted: str | None = None
) -> Iterator[None]:
    """The one place library errors become exit statuses; a decorator of a command, or a
    ``with`` around the part of one that has its own mapping. Every
    :class:`~nst_batch.errors.NstError` prints ``error: MESSAGE`` (a ManifestError's message lists
    every problem) and exits 1, or 2 for the ``usage`` errors (bad flags, a bad manifest). Ctrl-C
    (and SIGTERM, see :func:`sigterm_as_ctrl_c`) prints ``interrupted`` and exits 130 where it is
    given; elsewhere it ends the command as click does."""
    try:
        yield
    except usage as err:
        raise fail(str(err), 2) from None
    except NstError as err:
        raise fail(str(err)) from None
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        raise fail(interrupted, EXIT_INTERRUPTED) from None


@contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (docker stop, Kubernetes, Slurm) ends a command as Ctrl-C does: KeyboardInterrupt
    in the main thread, so the optimization stops and what it has is saved or reported."""
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be set from the main thread
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def optimization_failed(reason: str, where: str = "", markup: bool = True) -> str:
    """The warning for an output whose optimization failed (written, but not converged)."""
    label = "[bold yellow]warning:[/]" if markup else "warning:"
    return f"{label} {where + ': ' if where else ''}the optimization failed: {reason}"


def at(p: Step) -> str:
    """ " @256x192" for the pyramid level being optimized."""
    return f" @{p.image.shape[-1]}x{p.image.shape[-2]}" if p.image is not None else ""


def step_line(p: Step) -> str:
    """One optimizer step as a plain log line (for logs, CI and containers)."""
    return (
        f"step {p.step}/{p.total}{at(p)} loss={p.loss:.4g} content={p.content:.4g} "
        f"style={p.style:.4g} tv={p.tv:.4g} elapsed={p.elapsed:.1f}s"
    )


def log_due(
    parts: int, seconds: float = LOG_SECONDS, clock: Callable[[], float] = time.monotonic
) -> Callable[[Step], bool]:
    """When a plain progress line is due: the first and last step, every 1/``parts`` of the
    steps, and whenever ``seconds`` passed since the last line (slow steps, short budgets)."""
    last = -math.inf

    def due(p: Step) -> bool:
        nonlocal last
        now = clock()
        if p.step in (1, p.total) or p.step % max(1, p.total // parts) == 0:
            last = now
            return True
        if now - last >= seconds:
            last = now
            return True
        return False

    return due


def progress_bar(console: Console) -> Progress:
    """A terminal's progress display: description, bar, N/M, elapsed, remaining, and each
    task's ``info`` field."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
    )


@contextmanager
def progress_reporter(label: str) -> Iterator[Callable[[Step], None]]:
    """A rich bar on a terminal; plain log lines (:func:`log_due`) otherwise."""
    console = stderr()
    if not console.is_terminal:
        due = log_due(20)

        def log(p: Step) -> None:
            if due(p):
                print(step_line(p), file=sys.stderr, flush=True)

        yield log
        return
    with progress_bar(console) as bar:
        task = bar.add_task(label, total=None, info="loading")

        def update(p: Step) -> None:
            losses = f"{at(p)} loss {p.loss:.4g} (c {p.content:.3g} s {p.style:.3g} tv {p.tv:.3g})"
            bar.update(task, completed=p.step, total=p.total, info=losses)

        yield update
