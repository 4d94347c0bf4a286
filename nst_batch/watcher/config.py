"""The watch-folder daemon's settings, and where its folders are."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nst_batch.errors import ConfigError

STATUS_NAME = "status.json"  # in the inbox; the scanner never takes it for a job part


def default_worker_id() -> str:
    """``hostname-pid``: unique among live daemons, also across containers (hostname = id)."""
    return safe_worker_id(f"{socket.gethostname()}-{os.getpid()}")


def safe_worker_id(text: str) -> str:
    """A worker id usable as one folder name."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", text).lstrip(".")
    if not cleaned:
        raise ConfigError(f"worker id {text!r} has no usable characters")
    return cleaned


@dataclass(frozen=True)
class WatchConfig:
    """One daemon on one inbox.

    Folders: the inbox takes drops; ``state`` (default: the inbox's parent) holds ``work/<worker
    id>/`` (claimed jobs), ``done/`` and ``failed/``; results go to ``outbox`` (default: the
    inbox's sibling ``outbox/``). With ``/data/inbox`` that is ``/data/{work,done,failed,outbox}``.
    Claims are ``os.rename`` calls, atomic only within one filesystem, so the state folders must
    be on the inbox's filesystem (checked at start).
    """

    inbox: Path
    outbox: Path | None = None  # None: <inbox parent>/outbox
    state: Path | None = None  # None: the inbox's parent
    worker_id: str = field(default_factory=default_worker_id)
    settle: float = 2.0  # seconds a job's files must stay unchanged (size and mtime)
    rescan: float = 5.0  # seconds between scans without a watchdog event (the scan is the truth)
    poll: bool = False  # PollingObserver: for NFS/SMB/Docker Desktop mounts (no inotify there)
    once: bool = False  # process what is (or becomes) complete now, then exit
    max_edge: int = 8192  # longest input image edge accepted, and the largest `size` a job may ask
    max_retries: int = 2  # a job failing for a reason other than bad input runs at most 1 + this
    grace: float = 8.0  # seconds a running job may finish after SIGTERM (docker stop waits 10)
    status_interval: float = 5.0  # seconds between heartbeats and status.json writes
    stale_after: float = 60.0  # a worker silent this long is dead; its jobs are requeued
    batch_size: int = 1  # jobs claimed and run together (same size: one group)
    output_format: str = ".png"
    defaults: tuple[tuple[str, Any], ...] = ()  # flat stylize parameters NAME.json overrides

    def __post_init__(self) -> None:
        for name in ("settle", "rescan", "grace", "status_interval", "stale_after"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, not {getattr(self, name)}")
        if self.rescan <= 0 or self.status_interval <= 0:
            raise ConfigError("rescan and status interval must be positive")
        if self.stale_after < 2 * self.status_interval:
            raise ConfigError(
                f"stale_after ({self.stale_after:g} s) must be at least twice the status "
                f"interval ({self.status_interval:g} s), or live workers would look dead"
            )
        if self.max_retries < 0 or self.batch_size < 1 or self.max_edge < 16:
            raise ConfigError("max_retries >= 0, batch_size >= 1 and max_edge >= 16 are needed")
        if self.output_format not in (".png", ".jpg", ".webp"):
            raise ConfigError(
                f"output format must be .png, .jpg or .webp, not {self.output_format}"
            )
        object.__setattr__(self, "worker_id", safe_worker_id(self.worker_id))

    @property
    def root(self) -> Path:
        return self.state if self.state is not None else self.inbox.parent

    @property
    def out(self) -> Path:
        return self.outbox if self.outbox is not None else self.inbox.parent / "outbox"

    @property
    def work_root(self) -> Path:
        return self.root / "work"

    @property
    def work(self) -> Path:
        return self.work_root / self.worker_id

    @property
    def done(self) -> Path:
        return self.root / "done"

    @property
    def failed(self) -> Path:
        return self.root / "failed"

    @property
    def status_file(self) -> Path:
        return self.inbox / STATUS_NAME

    @property
    def max_attempts(self) -> int:
        return 1 + self.max_retries

    def default_params(self) -> dict[str, Any]:
        return dict(self.defaults)

    def prepare(self) -> None:
        """Create the folders; refuse layouts where a claim could not be an atomic rename."""
        if not self.inbox.is_dir():
            raise ConfigError(f"{self.inbox}: inbox folder does not exist")
        for folder in (self.work, self.done, self.failed, self.out):
            folder.mkdir(parents=True, exist_ok=True)
        device = self.inbox.stat().st_dev
        for folder in (self.work, self.done, self.failed):
            if folder.stat().st_dev != device:
                raise ConfigError(
                    f"{folder} is on another filesystem than the inbox {self.inbox}; "
                    "claims need an atomic rename: give --state on the inbox's filesystem"
                )
        inbox = self.inbox.resolve()
        for folder in (self.out, self.root):
            if folder.resolve() == inbox:
                raise ConfigError(f"{folder}: must not be the inbox itself")


def make_config(inbox: Path, defaults: Mapping[str, Any] | None = None, **kw: Any) -> WatchConfig:
    """A WatchConfig from flat keyword settings (``None`` = default), as the CLI parses them."""
    settings = {k: v for k, v in kw.items() if v is not None}
    items = tuple(sorted((k, v) for k, v in (defaults or {}).items() if v is not None))
    return WatchConfig(inbox=Path(inbox), defaults=items, **settings)
