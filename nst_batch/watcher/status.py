"""Worker records: the heartbeat that tells live daemons from dead ones, and ``status.json``.

Each worker rewrites ``work/<worker id>/.worker.json`` every status interval (a thread, so a long
job does not stop it); that file is its heartbeat and its status. Each then rebuilds the inbox's
``status.json`` from all workers' records, atomically, so several daemons on one inbox share one
file that lists them all instead of clobbering each other's.
"""

from __future__ import annotations

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


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


@dataclass
class WorkerStatus:
    """What one daemon reports; the daemon's main thread updates it, the heartbeat writes it."""

    worker_id: str
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    interval: float = 5.0
    started: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    state: str = "starting"  # starting, idle, working, stopping, stopped
    queue_depth: int = 0  # complete jobs in the inbox (settling or ready)
    current: str | None = None
    done: int = 0
    skipped: int = 0  # already done with the same parameters
    failed: int = 0
    requeued: int = 0
    last_error: str | None = None

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


def owner_dead(work: Path, stale_after: float, now: float | None = None) -> bool:
    """Whether the worker owning ``work`` is gone: silent for ``stale_after`` seconds, or on this
    host with its pid gone and at least two heartbeats missed (the pid alone could be another pid
    namespace's, e.g. containers sharing a hostname)."""
    now = time.time() if now is None else now
    record = read_record(work)
    if record is None:  # crashed between mkdir and first heartbeat, or not ours to judge yet
        try:
            return now - work.stat().st_mtime > stale_after
        except FileNotFoundError:
            return False
    age = now - float(record.get("updated", 0))
    if age > stale_after:
        return True
    same_host = record.get("host") == socket.gethostname()
    missed = age > 2 * float(record.get("interval", stale_after))
    return same_host and missed and not pid_alive(int(record.get("pid", -1)))


def write_summary(inbox_status: Path, work_root: Path) -> None:
    """``status.json``: every worker's latest record (the dead ones until they are cleaned up)."""
    workers = []
    for folder in sorted(p for p in work_root.iterdir() if p.is_dir()):
        record = read_record(folder)
        if record is not None:
            workers.append(record)
    summary = {"updated": time.time(), "updated_iso": _iso(time.time()), "workers": workers}
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


def fresh_workers(
    summary: dict[str, Any], max_age: float | None, local: bool = False
) -> list[dict[str, Any]]:
    """The workers (of this host with ``local``) that reported within ``max_age`` seconds."""
    now, host = time.time(), socket.gethostname()
    return [
        w
        for w in summary["workers"]
        if (max_age is None or now - float(w.get("updated", 0)) <= max_age)
        and (not local or w.get("host") == host)
        and w.get("state") != "stopped"
    ]
