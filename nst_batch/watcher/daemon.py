"""The watch loop: scan, settle, claim, run, file the result, and survive anything a drop does.

Lifecycle, as watchdog's: ``observer.schedule(handler, inbox)``, ``observer.start()``, the main
loop, ``observer.stop()``, ``observer.join()``. The handler only sets a hint; the main loop scans
on a hint and on a timer anyway (inotify drops events on overflow and sees nothing on NFS, SMB or
Docker Desktop mounts), so the scan is the source of truth. One thread (this one) runs jobs; a
heartbeat thread writes the worker record and ``status.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from nst_batch.engine.model import resolve_device
from nst_batch.errors import ConfigError, NstError
from nst_batch.images import write_atomic
from nst_batch.jobs.inputs import Job, is_done
from nst_batch.jobs.run import BatchHooks, Cancelled, JobEnd, done_fields, run_batched
from nst_batch.params import configs_from_params
from nst_batch.pool import ModelPool
from nst_batch.watcher.config import WatchConfig
from nst_batch.watcher.inbox import (
    Candidate,
    Claimed,
    Settler,
    claim,
    ignored,
    move_dir,
    read_attempts,
    requeue,
    scan,
    write_attempts,
)
from nst_batch.watcher.intake import build_job
from nst_batch.watcher.logs import LOGGER, event
from nst_batch.watcher.status import (
    GONE,
    RECORD,
    WorkerStatus,
    bury,
    owner_dead,
    pid_alive,
    read_record,
    write_record,
    write_summary,
)

EXIT_OBSERVER_DIED = 2


@dataclass
class _Daemon:
    config: WatchConfig
    models: ModelPool
    log: logging.Logger
    status: WorkerStatus
    settler: Settler
    hint: threading.Event = field(default_factory=threading.Event)  # "the inbox changed"
    reported: set[tuple[str, str]] = field(default_factory=set)  # incomplete jobs logged
    stopping: threading.Event = field(default_factory=threading.Event)
    cancel_at: float | None = None  # monotonic time after which the running job is cancelled

    # -- signals, heartbeat -------------------------------------------------------------------

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        # No logging here: a handler can interrupt the logging module mid-write.
        if self.stopping.is_set():
            self.cancel_at = time.monotonic()  # a second signal: stop the job now
        else:
            self.cancel_at = time.monotonic() + self.config.grace
            self.stopping.set()
        self.hint.set()

    def check_cancel(self) -> None:
        if self.cancel_at is not None and time.monotonic() >= self.cancel_at:
            raise Cancelled

    def beat(self) -> None:
        try:
            self.config.work.mkdir(parents=True, exist_ok=True)
            write_record(self.config.work, self.status)
            write_summary(self.config.status_file, self.config.work_root, self.config.stale_after)
        except OSError as err:  # a full disk must not kill the daemon; the next beat retries
            event(self.log, "error", None, reason=f"status not written: {err}")

    # -- recovery -----------------------------------------------------------------------------

    def take_own_folder(self) -> None:
        """Our worker id's folder may hold jobs of a previous life (a restarted container keeps
        hostname and pid 1): requeue them. A live other process with our id is refused."""
        record = read_record(self.config.work)
        if record is not None:
            same = record.get("pid") == os.getpid() and record.get("host") == self.status.host
            recent = time.time() - float(record.get("updated", 0)) <= self.config.stale_after
            if not same and recent and record.get("state") not in GONE:
                other = record.get("host") != self.status.host
                if other or pid_alive(int(record.get("pid", -1))):
                    raise ConfigError(
                        f"worker id {self.config.worker_id} is in use by a live daemon "
                        f"(pid {record.get('pid')} on {record.get('host')}); give --worker-id"
                    )
        self.requeue_all(self.config.work, "left by a previous run of this worker")

    def requeue_all(self, folder: Path, reason: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            for job in sorted(p for p in folder.iterdir() if p.is_dir() and not ignored(p.name)):
                if requeue(job, self.config.inbox) is not None:
                    self.status.requeued += 1
                    event(self.log, "requeued", job.name, reason=reason)

    def recover(self) -> None:
        """Requeue jobs of dead workers and mark them dead; delete temp files a crash left in the
        outbox."""
        for folder in sorted(self.config.work_root.iterdir()):
            if folder == self.config.work or not folder.is_dir():
                continue
            reason = owner_dead(folder, self.config.stale_after)
            if reason is not None:
                self.requeue_all(folder, f"worker {folder.name} is gone")
                if bury(folder, reason, self.config.worker_id):
                    event(self.log, "dead", None, worker=folder.name, reason=reason)
        # write_atomic's temp files are ".NAME.XXXX.tmp" and live for milliseconds: one this old
        # belongs to a writer that died.
        limit = time.time() - self.config.stale_after
        for folder in (self.config.out, self.config.inbox):
            for tmp in folder.glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    if tmp.lstat().st_mtime < limit:
                        tmp.unlink()
                        event(self.log, "cleaned", None, file=str(tmp))

    # -- one job's outcomes -------------------------------------------------------------------

    def fail(self, claimed: Claimed, reason: str, attempts: int, trace: str | None = None) -> None:
        self.status.failed += 1
        self.status.last_error = f"{claimed.name}: {reason}"
        try:
            moved = move_dir(claimed.folder, self.config.failed, claimed.name)
        except FileNotFoundError:
            event(self.log, "lost", claimed.name, reason="requeued by another worker meanwhile")
            return
        record = {
            "job": claimed.name,
            "reason": reason,
            "attempts": attempts,
            "worker": self.config.worker_id,
            "time": time.time(),
            "inputs": str(moved),
            "traceback": trace,
        }
        error_file = moved.with_name(f"{moved.name}.error.json")
        write_atomic(error_file, json.dumps(record, indent=2).encode() + b"\n")
        event(self.log, "failed", claimed.name, reason=reason, error_file=str(error_file))

    def finish(self, claimed: Claimed, name: str, **fields: Any) -> None:
        try:
            moved = move_dir(claimed.folder, self.config.done, claimed.name)
        except FileNotFoundError:
            event(self.log, "lost", claimed.name, reason="requeued by another worker meanwhile")
            return
        event(self.log, name, claimed.name, inputs=str(moved), **fields)

    def give_back(self, claimed: Claimed, reason: str) -> None:
        if requeue(claimed.folder, self.config.inbox) is not None:
            self.status.requeued += 1
            event(self.log, "requeued", claimed.name, reason=reason)

    def intake(self, claimed: Claimed) -> tuple[Job, int] | None:
        """The claimed job checked and counted as an attempt; None when it was filed already."""
        record = read_attempts(claimed.folder)
        attempts = int(record.get("attempts", 0) or 0) + 1  # type: ignore[call-overload]
        last = record.get("last_error") or "the daemon died while running it"
        if attempts > self.config.max_attempts:
            self.fail(claimed, f"gave up after {attempts - 1} attempts; last: {last}", attempts - 1)
            return None
        # Counted before the run: a job that kills the daemon every time still runs out of tries.
        write_attempts(claimed.folder, attempts, record.get("last_error"))  # type: ignore[arg-type]
        try:
            job = build_job(claimed, self.config)
        except NstError as err:
            self.fail(claimed, str(err), attempts)
            return None
        if is_done(job):
            self.status.skipped += 1
            self.finish(claimed, "skipped", reason="output exists with the same parameter hash")
            return None
        return job, attempts

    def run_jobs(self, group: list[tuple[Claimed, Job, int]]) -> None:
        """Run the claimed jobs through the batch runner: with ``--batch-size`` > 1, jobs that
        can share a batch are optimized as one; a batch that fails is rerun job by job, so a bad
        job is still isolated and filed alone."""
        entries = {id(job): (claimed, attempts) for claimed, job, attempts in group}

        def start(jobs: Sequence[Job]) -> None:
            names = [entries[id(job)][0].name for job in jobs]
            self.status.current, self.status.state = ", ".join(names), "working"
            for job in jobs:
                claimed, attempts = entries[id(job)]
                extra = {"batch": len(jobs)} if len(jobs) > 1 else {"size": job.config.size}
                event(self.log, "started", claimed.name, attempt=attempts, **extra)

        def batch_failed(jobs: Sequence[Job], reason: str) -> None:
            names = ", ".join(entries[id(job)][0].name for job in jobs)
            event(self.log, "error", names, reason=f"batch failed: {reason}")

        def end(job_end: JobEnd) -> None:
            claimed, attempts = entries[id(job_end.job)]
            self.file(claimed, attempts, job_end)
            self.status.current, self.status.state = None, "idle"

        hooks = BatchHooks(
            start=start,
            end=end,
            batch_failed=batch_failed,
            cancel_check=self.check_cancel,
            may_start=lambda: not self.stopping.is_set(),
        )
        try:
            run_batched([job for _, job, _ in group], self.models, self.config.batch_size, hooks)
        finally:
            self.status.current, self.status.state = None, "idle"

    def file(self, claimed: Claimed, attempts: int, end: JobEnd) -> None:
        """File a job by how it ended: done, failed, given back for a retry, or given back
        untouched (shutdown: not the job's fault, so the attempt does not count)."""
        if end.status == "done":
            assert end.result is not None
            self.status.done += 1
            self.finish(
                claimed,
                "done",
                output=str(end.job.output),
                seconds=round(end.seconds, 3),
                **done_fields(end.result),
            )
        elif end.status in ("cancelled", "not started"):
            write_attempts(claimed.folder, attempts - 1, None)
            reason = "shutdown grace period over" if end.status == "cancelled" else end.reason
            self.give_back(claimed, reason)
        elif end.job_fault or attempts >= self.config.max_attempts:
            self.fail(claimed, end.reason, attempts, end.trace)
        else:
            self.status.last_error = f"{claimed.name}: {end.reason}"
            write_attempts(claimed.folder, attempts, end.reason)
            self.give_back(claimed, f"will retry after {end.reason}")

    def preload(self) -> None:
        """Load (and with ``--check-onnx``, check) the default model now, not on the first job:
        a broken setup refuses to start instead of failing every job."""
        config, _ = configs_from_params({}, self.config.default_params())
        self.models.get(config.model, config.loss.layers, resolve_device(config.model.device))

    # -- the loop -----------------------------------------------------------------------------

    def note_incomplete(self, stuck: list[Candidate]) -> None:
        """Log each settled job that lacks a part once (again only after it changed or left),
        and list them all in the status."""
        for c in stuck:
            if (c.kind, c.name) not in self.reported:
                info = c.describe()
                event(self.log, "incomplete", c.name, missing=info["missing"], files=info["files"])
        self.reported = {(c.kind, c.name) for c in stuck}
        self.status.incomplete = [c.describe() for c in stuck]

    def take(self, ready: list[Any]) -> list[Claimed]:
        claimed: list[Claimed] = []
        for candidate in ready:
            if len(claimed) >= self.config.batch_size or self.stopping.is_set():
                break
            try:
                got = claim(candidate, self.config.work)
            except OSError as err:
                event(self.log, "error", candidate.name, reason=f"claim failed: {err}")
                continue
            if got is not None:
                event(self.log, "claimed", got.name, origin=got.origin)
                claimed.append(got)
        return claimed

    def process(self, claimed: list[Claimed]) -> None:
        group: list[tuple[Claimed, Job, int]] = []
        for c in claimed:
            try:
                checked = self.intake(c)
            except Exception as err:  # an I/O error filing it: give it back for a later try
                event(self.log, "error", c.name, reason=f"{type(err).__name__}: {err}")
                self.give_back(c, "intake error")
                continue
            if checked is not None:
                job, attempts = checked
                group.append((c, job, attempts))
        self.run_jobs(group)

    def loop(self, observer: Any | None) -> int:
        next_recovery = 0.0
        while not self.stopping.is_set():
            if observer is not None and not observer.is_alive():
                event(self.log, "error", None, reason="file system observer died; exiting")
                return EXIT_OBSERVER_DIED
            if time.monotonic() >= next_recovery:
                self.recover()
                next_recovery = time.monotonic() + self.config.status_interval
            self.hint.clear()
            try:
                candidates = scan(self.config.inbox)
                settled = self.settler.settled(candidates)
                self.note_incomplete([c for c in settled if not c.complete])
                ready = [c for c in settled if c.complete]
                self.status.queue_depth = sum(c.complete for c in candidates)
                claimed = self.take(ready)
                if claimed:
                    self.process(claimed)
                    continue
            except Exception as err:  # a full disk, a vanished folder: wait and try again
                self.status.last_error = f"{type(err).__name__}: {err}"
                event(self.log, "error", None, reason=self.status.last_error)
                self.stopping.wait(self.config.rescan)
                continue
            if self.config.once and not any(c.complete for c in candidates):
                self.note_incomplete([c for c in candidates if not c.complete])  # left behind
                break
            due = self.settler.next_due()
            self.hint.wait(min(self.config.rescan, due + 0.01) if due else self.config.rescan)
        return 0


@contextlib.contextmanager
def _signals(daemon: _Daemon) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread (e.g. in tests)
        return
    previous = {s: signal.signal(s, daemon.on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def _heartbeat(daemon: _Daemon) -> Iterator[None]:
    done = threading.Event()

    def run() -> None:
        while not done.wait(daemon.config.status_interval):
            daemon.beat()

    thread = threading.Thread(target=run, name="nst-heartbeat", daemon=True)
    daemon.beat()
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@contextlib.contextmanager
def _observer(daemon: _Daemon) -> Iterator[Any | None]:
    if daemon.config.once:
        yield None
        return
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers import Observer
    from watchdog.observers.polling import PollingObserver

    class Hint(FileSystemEventHandler):
        """Only marks the inbox as changed; the main loop's scan decides what that means."""

        def on_any_event(self, fs_event: FileSystemEvent) -> None:
            paths = (fs_event.src_path, getattr(fs_event, "dest_path", ""))
            if any(p and not ignored(os.path.basename(os.fsdecode(p))) for p in paths):
                daemon.hint.set()

    observer = PollingObserver(timeout=1.0) if daemon.config.poll else Observer()
    observer.schedule(Hint(), str(daemon.config.inbox), recursive=False)
    try:
        observer.start()
    except OSError as err:
        raise ConfigError(f"cannot watch {daemon.config.inbox} ({err}); try --poll") from None
    try:
        yield observer
    finally:
        observer.stop()
        observer.join()


def watch(config: WatchConfig, models: ModelPool, log: logging.Logger | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT (or, with ``config.once``, until the inbox has no
    complete job left); the exit status. Bad input never stops it; it raises ConfigError only
    before taking any job (bad folders, a worker id in use, no way to watch)."""
    config.prepare()
    status = WorkerStatus(
        config.worker_id, interval=config.status_interval, stale_after=config.stale_after
    )
    daemon = _Daemon(
        config, models, log or logging.getLogger(LOGGER), status, Settler(config.settle)
    )
    daemon.take_own_folder()
    event(daemon.log, "starting", None, worker=config.worker_id, inbox=str(config.inbox))
    code = 1
    try:
        with _heartbeat(daemon), _signals(daemon):
            daemon.preload()
            status.state = "idle"
            with _observer(daemon) as observer:
                event(daemon.log, "watching", None, poll=config.poll, once=config.once)
                code = daemon.loop(observer)
    finally:
        # Every job is filed or given back before the next is taken, so our folder holds none
        # unless we crashed; it goes, and the final record stays in status.json.
        status.state = "stopped"
        daemon.requeue_all(config.work, "left at exit")
        daemon.beat()
        (config.work / RECORD).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            config.work.rmdir()
    event(daemon.log, "stopped", None, done=status.done, failed=status.failed, exit=code)
    return code
