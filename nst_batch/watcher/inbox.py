"""The inbox as a spool: find complete jobs, wait until they settle, claim them by rename.

Everything here works on the file system alone (no model), so several daemons, on one host or on
several sharing a mount, agree through ``os.rename``: the first rename of a job's claim token
(the folder, or a pair's content file) wins; the loser gets FileNotFoundError and skips.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from nst_batch.watcher.config import STATUS_NAME

# NAME.content.EXT, NAME.style.EXT (a pair's parts); NAME.json holds its parameters.
PART = re.compile(r"^(?P<name>[^.].*)\.(?P<role>content|style)\.(?P<ext>[A-Za-z0-9]+)$")
FOLDER_PART = re.compile(r"^(?P<role>content|style)\.(?P<ext>[A-Za-z0-9]+)$")
PARAMS = "params.json"  # a claimed job's parameters, whichever convention it came in by
ATTEMPTS = ".nst-attempts.json"  # travels with a requeued job, so retries stay capped

Signature = tuple[tuple[str, int, int, int], ...]  # (name, file type, size, mtime_ns) per part


def ignored(name: str) -> bool:
    """Names that are never a job or a part: hidden, being written, or the daemon's own."""
    return name.startswith(".") or name.endswith((".tmp", ".part")) or name == STATUS_NAME


@dataclass(frozen=True)
class Candidate:
    """A job seen in the inbox: a pair's files, or a job folder."""

    name: str
    kind: Literal["pair", "folder"]
    parts: tuple[Path, ...]  # pair: its files; folder: the folder itself (claimed as a whole)
    complete: bool  # has a content and a style part
    signature: Signature  # changes whenever any part's size or mtime does
    mtime: float  # newest part's: oldest jobs are taken first
    missing: tuple[str, ...] = ()  # the roles an incomplete job lacks: content, style

    def describe(self) -> dict[str, object]:
        """An incomplete job as logged and listed in status.json."""
        files = [p.name for p in self.parts] if self.kind == "pair" else [f"{self.name}/"]
        return {"job": self.name, "missing": list(self.missing), "files": files}


def _missing(roles: set[str]) -> tuple[str, ...]:
    return tuple(r for r in ("content", "style") if r not in roles)


def _sig(path: Path) -> tuple[str, int, int, int]:
    st = path.lstat()  # never follow or open: a FIFO would block, a symlink is judged later
    return (path.name, stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)


def _folder(path: Path) -> Candidate | None:
    try:
        entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
        sig = (_sig(path), *(_sig(p) for p in entries))
    except FileNotFoundError:  # claimed or removed while we looked
        return None
    except OSError:  # unreadable folder: claim it, so it fails with a reason
        entries, sig = [], (_sig(path),)
    roles = {m["role"] for p in entries if (m := FOLDER_PART.match(p.name))}
    mtime = max(s[3] for s in sig) / 1e9
    complete = roles == {"content", "style"} or not os.access(path, os.R_OK | os.X_OK)
    missing = () if complete else _missing(roles)
    return Candidate(path.name, "folder", (path,), complete, sig, mtime, missing)


def scan(inbox: Path) -> list[Candidate]:
    """Every job in the inbox, complete or not, oldest first. Reads names and lstat only."""
    pairs: dict[str, list[Path]] = {}
    found: list[Candidate] = []
    try:
        entries = list(os.scandir(inbox))
    except FileNotFoundError:
        return []
    for entry in entries:
        if ignored(entry.name):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            candidate = _folder(path)
            if candidate is not None:
                found.append(candidate)
        elif m := PART.match(entry.name):
            pairs.setdefault(m["name"], []).append(path)
        elif entry.name.endswith(".json"):
            pairs.setdefault(entry.name[: -len(".json")], []).append(path)
    for name, unsorted in pairs.items():
        parts = tuple(sorted(unsorted))
        try:
            sig = tuple(_sig(p) for p in parts)
        except FileNotFoundError:
            continue
        roles = {m["role"] for p in parts if (m := PART.match(p.name))}
        complete = roles == {"content", "style"}
        mtime = max(s[3] for s in sig) / 1e9
        found.append(Candidate(name, "pair", parts, complete, sig, mtime, _missing(roles)))
    return sorted(found, key=lambda c: (c.mtime, c.name))


@dataclass
class Settler:
    """When each job's current signature was first seen (monotonic clock, not file times, so a
    skewed network clock cannot make a half-written file look old). Owned by one daemon."""

    settle: float
    seen: dict[tuple[str, str], tuple[Signature, float]] = field(default_factory=dict)

    def ready(self, candidates: Iterable[Candidate], now: float | None = None) -> list[Candidate]:
        """The complete candidates whose files have not changed for ``settle`` seconds."""
        return [c for c in self.settled(candidates, now) if c.complete]

    def settled(self, candidates: Iterable[Candidate], now: float | None = None) -> list[Candidate]:
        """The candidates, complete or not, whose files have not changed for ``settle`` seconds."""
        now = time.monotonic() if now is None else now
        current: dict[tuple[str, str], tuple[Signature, float]] = {}
        settled = []
        for c in candidates:
            key = (c.kind, c.name)
            sig, since = self.seen.get(key, (c.signature, now))
            if sig != c.signature:
                since = now
            current[key] = (c.signature, since)
            if now - since >= self.settle:
                settled.append(c)
        self.seen = current  # forget jobs that left the inbox
        return settled

    def next_due(self, now: float | None = None) -> float | None:
        """Seconds until the next waiting job settles (if nothing changes), or None."""
        now = time.monotonic() if now is None else now
        waits = [since + self.settle - now for _, since in self.seen.values()]
        waits = [w for w in waits if w > 0]
        return min(waits) if waits else None


@dataclass(frozen=True)
class Claimed:
    """A job moved into this worker's folder: ``folder/content.EXT``, ``style.EXT``,
    ``params.json`` (pairs are renamed into this layout; folders keep theirs)."""

    name: str
    folder: Path
    origin: Literal["pair", "folder"]


def _free_name(parent: Path, name: str) -> Path:
    """``parent/name``, or ``name~2``, ``name~3``... when taken (never overwrite user files)."""
    path, n = parent / name, 1
    while path.exists() or path.is_symlink():
        n += 1
        path = parent / f"{name}~{n}"
    return path


def move_dir(folder: Path, parent: Path, name: str) -> Path:
    """Rename ``folder`` to ``parent/name`` (or a free variant); the new path.

    Renaming a folder onto a non-empty one fails instead of replacing it, so a name taken between
    the check and the rename costs one more try, never a file. FileNotFoundError means someone
    else moved ``folder`` first."""
    for _ in range(100):
        target = _free_name(parent, name)
        try:
            os.rename(folder, target)
            return target
        except OSError as err:
            if isinstance(err, FileNotFoundError) and not folder.exists():
                raise
            if not target.exists():
                raise
    raise OSError(f"no free name for {name} in {parent}")  # pragma: no cover


def _absolute_link(path: Path, origin: Path) -> None:
    """A relative symlink moved out of ``origin`` would point elsewhere: rewrite it absolute."""
    target = os.readlink(path)
    if os.path.isabs(target):
        return
    tmp = path.with_name(f".{path.name}.link.tmp")
    os.symlink(os.path.normpath(os.path.join(origin, target)), tmp)
    os.replace(tmp, path)


def claim(candidate: Candidate, work: Path) -> Claimed | None:
    """Take the job into ``work`` by rename; None when another daemon was first."""
    if candidate.kind == "folder":
        source = candidate.parts[0]
        try:
            folder = move_dir(source, work, candidate.name)
        except FileNotFoundError:
            return None
        with contextlib.suppress(OSError):  # an unreadable folder fails later, with a reason
            for p in folder.iterdir():
                if p.is_symlink():
                    _absolute_link(p, source)
        return Claimed(candidate.name, folder, "folder")
    content = [p for p in candidate.parts if (m := PART.match(p.name)) and m["role"] == "content"]
    folder = _free_name(work, candidate.name)
    folder.mkdir()
    # The content file is the claim token: whoever renames it first owns the pair; the winner
    # then takes the rest, which nobody else touches (without content a pair is incomplete).
    ordered = content + [p for p in candidate.parts if p not in content]
    for i, part in enumerate(ordered):
        m = PART.match(part.name)
        target = folder / (f"{m['role']}.{m['ext']}" if m else PARAMS)
        try:
            os.rename(part, target)
        except FileNotFoundError:
            if i == 0:  # lost the race for the token
                folder.rmdir()
                return None
            continue  # removed by the user meanwhile: the job fails on the missing part
        if target.is_symlink():
            _absolute_link(target, part.parent)
    return Claimed(candidate.name, folder, "pair")


def read_attempts(folder: Path) -> dict[str, object]:
    try:
        record = json.loads((folder / ATTEMPTS).read_text())
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}


def write_attempts(folder: Path, attempts: int, last_error: str | None) -> None:
    record = {"attempts": attempts, "last_error": last_error}
    (folder / ATTEMPTS).write_text(json.dumps(record) + "\n")


def requeue(claimed_folder: Path, inbox: Path) -> Path | None:
    """Give a claimed job back to the inbox as a job folder; None if someone else already did."""
    try:
        return move_dir(claimed_folder, inbox, claimed_folder.name)
    except FileNotFoundError:
        return None
