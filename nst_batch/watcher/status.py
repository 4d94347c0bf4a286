"""Worker records: the heartbeat that tells live daemons from dead ones, and ``status.json``.

Each worker rewrites ``work/<worker id>/.worker.json`` every status interval (a thread, so a long
job does not stop it); that file is its heartbeat and its status. Each then rebuilds the inbox's
``status.json`` from all workers' records, atomically, so several daemons on one inbox share one
file that lists them all instead of clobbering each other's.

A worker is dead when it stopped, is silent past its ``stale_after``, or runs on this host with
its pid gone (:func:`dead_reason`). Whoever notices marks it: a daemon rewrites a dead worker's
record as ``"state": "dead"`` (kept for :data:`KEEP_DEAD` seconds) and the summary shows it so;
``nst-batch status`` judges each record again when it reads, and counts only live workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nst_batch.errors import NstError
from nst_batch.images import write_atomic

RECORD = ".worker.json"
KEEP_DEAD = 24 * 3600.0  # seconds a dead worker's record stays (in work/ and status.json)
GONE = ("stopped", "dead")  # states of a worker that is not coming back by itself


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


@dataclass
class WorkerStatus:
    """What one daemon reports; the daemon's main thread updates it, the heartbeat writes it."""

    worker_id: str
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    interval: float = 5.0
    stale_after: float = 60.0  # silent this long = dead (readers of the record use it)
    started: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    state: str = "starting"  # starting, idle, working, stopped; others may mark it dead
    queue_depth: int = 0  # complete jobs in the inbox (settling or ready)
    current: str | None = None
    done: int = 0
    skipped: int = 0  # already done with the same parameters
    failed: int = 0
    requeued: int = 0
    last_error: str | None = None
    incomplete: list[dict[str, Any]] = field(default_factory=list)  # settled, lacking a part

    def record(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_iso"], data["updated_iso"] = _iso(self.started), _iso(self.updated)
        return data


def write_record(work: Path, status: WorkerStatus) -> None:
    status.updated = time.time()
    write_atomic(work / RECORD, json.dumps(status.record(), indent=2).encode() + b"\n")


def read_record(work: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((work / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def dead_reason(
    record: dict[str, Any], stale_after: float | None = None, now: float | None = None
) -> str | None:
    """Why the worker of ``record`` is not alive, or None while it is: it stopped or was marked
    dead, is silent for ``stale_after`` seconds (default: the record's own), or is on this host
    with its pid gone and at least two heartbeats missed (the pid alone could be another pid
    namespace's, e.g. containers sharing a hostname)."""
    if record.get("state") in GONE:
        return str(record.get("dead_reason") or record["state"])
    now = time.time() if now is None else now
    limit = float(record.get("stale_after", 60.0) if stale_after is None else stale_after)
    age = now - float(record.get("updated", 0))
    pid = int(record.get("pid", -1))
    same_host = record.get("host") == socket.gethostname()
    if same_host and age > 2 * float(record.get("interval", limit)) and not pid_alive(pid):
        return f"pid {pid} gone"
    return f"silent for {age:.0f} s" if age > limit else None


def owner_dead(work: Path, stale_after: float, now: float | None = None) -> str | None:
    """Why the worker owning ``work`` is gone (:func:`dead_reason`), or None while it lives."""
    now = time.time() if now is None else now
    record = read_record(work)
    if record is None:  # crashed between mkdir and first heartbeat, or not ours to judge yet
        try:
            return "no record" if now - work.stat().st_mtime > stale_after else None
        except FileNotFoundError:
            return None
    return dead_reason(record, stale_after, now)


def bury(work: Path, reason: str, noticed_by: str, now: float | None = None) -> bool:
    """After its jobs were requeued: mark a dead worker's record dead (so status.json shows it),
    or remove it once dead for :data:`KEEP_DEAD` seconds. True when it was newly marked."""
    now = time.time() if now is None else now
    record = read_record(work)
    with contextlib.suppress(OSError):  # its owner or another daemon may remove it meanwhile
        if record is not None and record.get("state") not in GONE:
            record.update(state="dead", dead_reason=reason, noticed_by=noticed_by)
            record["dead_noticed"] = now
            write_atomic(work / RECORD, json.dumps(record, indent=2).encode() + b"\n")
            return True
        if record is None or now - float(record.get("updated", 0)) > KEEP_DEAD:
            (work / RECORD).unlink(missing_ok=True)
            work.rmdir()
    return False


def judged(record: dict[str, Any], stale_after: float | None = None) -> dict[str, Any]:
    """The record as it stands now: marked ``"state": "dead"`` when its worker is gone."""
    reason = dead_reason(record, stale_after)
    if reason is None or record.get("state") in GONE:
        return record
    return {**record, "state": "dead", "dead_reason": reason}


def write_summary(inbox_status: Path, work_root: Path, stale_after: float | None = None) -> None:
    """``status.json``: every worker's latest record, dead ones marked (kept for KEEP_DEAD s),
    how many are live, and the incomplete jobs that live workers see in the inbox."""
    workers: list[dict[str, Any]] = []
    incomplete: dict[str, dict[str, Any]] = {}
    for folder in sorted(p for p in work_root.iterdir() if p.is_dir()):
        record = read_record(folder)
        if record is not None:
            record = judged(record, stale_after)
            seen = record.pop("incomplete", [])
            if record.get("state") not in GONE:
                incomplete.update((job["job"], job) for job in seen)
            workers.append(record)
    now = time.time()
    live = sum(w.get("state") not in GONE for w in workers)
    summary = {"updated": now, "updated_iso": _iso(now), "live": live, "workers": workers}
    summary["incomplete"] = [incomplete[name] for name in sorted(incomplete)]
    write_atomic(inbox_status, json.dumps(summary, indent=2).encode() + b"\n")


def read_summary(inbox_status: Path) -> dict[str, Any]:
    try:
        summary = json.loads(inbox_status.read_text())
    except FileNotFoundError:
        raise NstError(f"{inbox_status}: no status (is a daemon watching this inbox?)") from None
    except (OSError, ValueError) as err:
        raise NstError(f"{inbox_status}: unreadable status ({err})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("workers"), list):
        raise NstError(f"{inbox_status}: not an nst-batch status file")
    return summary


def live_workers(
    summary: dict[str, Any], max_age: float | None = None, local: bool = False
) -> list[dict[str, Any]]:
    """The live workers (of this host with ``local``; that reported within ``max_age`` seconds),
    each judged again now: status.json is only as fresh as its last writer."""
    now, host = time.time(), socket.gethostname()
    return [
        w
        for w in summary["workers"]
        if dead_reason(w, now=now) is None
        and (max_age is None or now - float(w.get("updated", 0)) <= max_age)
        and (not local or w.get("host") == host)
    ]
