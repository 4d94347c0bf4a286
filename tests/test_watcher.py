"""Watch-folder daemon: the scanner and claims in-process, then the real daemon (a subprocess
with a real watchdog observer) on temp folders, with tiny jobs on the real bundled weights."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from nst_batch.cli import app
from nst_batch.demo import swirl_painting
from nst_batch.errors import ConfigError
from nst_batch.watcher.config import WatchConfig
from nst_batch.watcher.inbox import Settler, claim, move_dir, scan
from nst_batch.watcher.status import WorkerStatus, owner_dead, write_record, write_summary
from tests.conftest import content_picture, tiny_clip

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
FAST = [
    "--settle", "0.3", "--rescan", "1", "--status-interval", "0.5", "--stale-after", "2",
    "--size", "32", "--steps", "1", "--device", "cpu", "--targets-backend", "torch", "--log-json",
]  # fmt: skip


def png_bytes(kind: str = "content", width: int = 40, height: int = 30) -> bytes:
    img = content_picture(width, height) if kind == "content" else swirl_painting(40, 1, 60)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def drop_pair(inbox: Path, name: str, params: dict[str, object] | None = None) -> None:
    if params is not None:
        (inbox / f"{name}.json").write_text(json.dumps(params))
    (inbox / f"{name}.style.png").write_bytes(png_bytes("style"))
    (inbox / f"{name}.content.png").write_bytes(png_bytes("content"))


# -- in-process: scanning, settling, claiming, liveness ------------------------------------------


def test_scan_finds_pairs_and_folders_and_ignores_the_rest(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    drop_pair(inbox, "a", {"steps": 2})
    (inbox / "half.content.png").write_bytes(png_bytes())  # no style yet
    folder = inbox / "b"
    folder.mkdir()
    (folder / "content.jpg").write_bytes(b"x")
    (folder / "style.png").write_bytes(b"y")
    for junk in (".c.content.png", "d.content.png.part", "e.style.png.tmp", "status.json"):
        (inbox / junk).write_bytes(b"z")
    (inbox / ".hidden").mkdir()
    found = {c.name: c for c in scan(inbox)}
    assert set(found) == {"a", "b", "half"}
    assert found["a"].complete and found["a"].kind == "pair" and len(found["a"].parts) == 3
    assert found["b"].complete and found["b"].kind == "folder"
    assert not found["half"].complete


def test_a_job_is_ready_only_after_its_files_stop_changing(tmp_path: Path) -> None:
    drop_pair(tmp_path, "a")
    settler = Settler(settle=2.0)
    assert settler.ready(scan(tmp_path), now=100.0) == []
    assert settler.next_due(now=100.0) == pytest.approx(2.0)
    assert settler.ready(scan(tmp_path), now=101.5) == []
    with (tmp_path / "a.content.png").open("ab") as f:  # still being written
        f.write(b"more")
    assert settler.ready(scan(tmp_path), now=102.5) == []  # the clock restarted at the change
    assert settler.ready(scan(tmp_path), now=104.0) == []
    assert [c.name for c in settler.ready(scan(tmp_path), now=104.6)] == ["a"]


def test_claim_race_has_one_winner_and_keeps_every_file(tmp_path: Path) -> None:
    inbox, work_a, work_b = tmp_path / "inbox", tmp_path / "wa", tmp_path / "wb"
    for d in (inbox, work_a, work_b):
        d.mkdir()
    drop_pair(inbox, "a", {"steps": 2})
    (candidate,) = scan(inbox)
    won = claim(candidate, work_a)
    assert won is not None and claim(candidate, work_b) is None
    assert sorted(p.name for p in won.folder.iterdir()) == [
        "content.png",
        "params.json",
        "style.png",
    ]
    assert list(inbox.iterdir()) == [] and list(work_b.iterdir()) == []
    # Filing never overwrites: a second job of the same name gets a new folder name.
    (tmp_path / "done" / "a").mkdir(parents=True)
    (tmp_path / "done" / "a" / "content.png").write_bytes(b"older job")
    moved = move_dir(won.folder, tmp_path / "done", "a")
    assert moved.name == "a~2" and (tmp_path / "done/a/content.png").read_bytes() == b"older job"


def test_many_threads_claiming_one_inbox_take_each_job_once(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(30):
        drop_pair(inbox, f"j{i:02d}")
    candidates = scan(inbox)
    taken: list[str] = []

    def worker(n: int) -> None:
        work = tmp_path / f"w{n}"
        work.mkdir()
        for c in candidates:
            got = claim(c, work)
            if got is not None:
                taken.append(got.name)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == [f"j{i:02d}" for i in range(30)]


def test_a_worker_is_dead_when_silent_or_its_pid_is_gone(tmp_path: Path) -> None:
    def record(pid: int, age: float) -> Path:
        folder = tmp_path / f"w{pid}-{age}"
        folder.mkdir()
        data = {"pid": pid, "host": socket.gethostname(), "interval": 0.5, "updated": time.time()}
        data["updated"] -= age
        (folder / ".worker.json").write_text(json.dumps(data))
        return folder

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert not owner_dead(record(os.getpid(), 1.5), stale_after=10)  # alive, beating
    assert owner_dead(record(os.getpid(), 11), stale_after=10)  # alive but silent: hung
    assert owner_dead(record(gone.pid, 1.5), stale_after=10)  # pid gone, two beats missed
    assert not owner_dead(record(gone.pid, 0.2), stale_after=10)  # too soon to say


def test_config_refuses_nonsense(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="twice the status interval"):
        WatchConfig(tmp_path, status_interval=5, stale_after=6)
    with pytest.raises(ConfigError, match="does not exist"):
        WatchConfig(tmp_path / "nope").prepare()
    config = WatchConfig(tmp_path / "inbox", worker_id="host/1")
    assert config.worker_id == "host_1" and config.out == tmp_path / "outbox"


# -- the daemon as a subprocess -------------------------------------------------------------------


class Daemon:
    """``nst-batch watch`` in a subprocess, logging JSON lines to a file."""

    def __init__(self, root: Path, *args: str, tag: str = "d") -> None:
        self.log = root / f"{tag}.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "nst_batch", "watch", str(root / "inbox"), *FAST, *args]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stderr=log, stdout=log, env=env)

    def events(self, name: str | None = None) -> list[dict[str, object]]:
        found = []
        for line in self.log.read_text().splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if name is None or item.get("event") == name:
                found.append(item)
        return found

    def wait_for(self, check: Callable[[], bool], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; daemon log:\n{self.log_text()}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def log_text(self) -> str:
        return self.log.read_text()[-4000:]


def run_once(root: Path, *args: str) -> Daemon:
    daemon = Daemon(root, "--once", *args)
    assert daemon.proc.wait(120) == 0, daemon.log_text()
    return daemon


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    (tmp_path / "inbox").mkdir()
    return tmp_path


def names(folder: Path, suffix: str = "") -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(suffix))


def assert_clean_outbox(root: Path, jobs: list[str]) -> None:
    """Each job: one image and its sidecar; nothing else (no temp file, no partial image)."""
    expected = sorted([f"{j}.png" for j in jobs] + [f"{j}.json" for j in jobs])
    assert names(root / "outbox") == expected
    for job in jobs:
        meta = json.loads((root / "outbox" / f"{job}.json").read_text())
        assert not meta["interrupted"] and meta["parameter_hash"]


def test_slow_writer_is_not_taken_early(root: Path) -> None:
    inbox = root / "inbox"
    daemon = Daemon(root, "--settle", "1.0")  # chunks come 0.2 s apart
    daemon.wait_for(lambda: bool(daemon.events("watching")))  # the model is loaded
    (inbox / "slow.style.png").write_bytes(png_bytes("style"))
    data = png_bytes("content", width=320, height=240)
    chunks = [data[i : i + len(data) // 10 + 1] for i in range(0, len(data), len(data) // 10 + 1)]
    with (inbox / "slow.content.png").open("wb") as f:
        for chunk in chunks:  # about 2 s in all, a pause shorter than the settle time each
            f.write(chunk)
            f.flush()
            time.sleep(0.2)
    daemon.wait_for(lambda: bool(daemon.events("done") or daemon.events("failed")))
    assert daemon.stop() == 0
    assert names(root / "failed") == [], daemon.log_text()
    assert (root / "done" / "slow" / "content.png").read_bytes() == data
    assert_clean_outbox(root, ["slow"])


def test_sigkill_mid_job_then_restart_finishes_every_job_once(root: Path) -> None:
    inbox = root / "inbox"
    drop_pair(inbox, "victim", {"steps": 1000, "max_seconds": 3, "size": 48})
    first = Daemon(root, tag="first")
    first.wait_for(lambda: bool(first.events("started")))
    for i in range(3):
        drop_pair(inbox, f"after{i}")
    time.sleep(0.8)
    first.proc.kill()
    first.proc.wait()
    assert not (root / "outbox" / "victim.png").exists()
    second = Daemon(root, tag="second")
    jobs = ["after0", "after1", "after2", "victim"]
    second.wait_for(lambda: names(root / "done") == jobs)
    assert second.stop() == 0
    done = [e["job"] for d in (first, second) for e in d.events("done")]
    assert sorted(done) == jobs  # each exactly once
    assert any(e["job"] == "victim" for e in second.events("requeued"))
    assert_clean_outbox(root, jobs)
    assert names(root / "failed") == [] and names(inbox) == ["status.json"]
    # The second's folder is gone; the killed one's holds only its record, marked dead.
    (left,) = names(root / "work")
    assert names(root / "work" / left) == [".worker.json"]
    assert json.loads((root / "work" / left / ".worker.json").read_text())["state"] == "dead"


def test_two_daemons_on_one_inbox_never_process_a_job_twice(root: Path) -> None:
    a = Daemon(root, tag="a")
    b = Daemon(root, "--poll", tag="b")
    jobs = [f"job{i:02d}" for i in range(20)]
    for job in jobs:
        drop_pair(root / "inbox", job)
    a.wait_for(lambda: len(names(root / "done")) == 20, timeout=150)
    assert a.stop() == 0 and b.stop() == 0
    done = [e["job"] for d in (a, b) for e in d.events("done")]
    assert sorted(done) == jobs, (a.log_text(), b.log_text())
    assert not a.events("failed") and not b.events("failed")
    assert_clean_outbox(root, jobs)
    status = json.loads((root / "inbox" / "status.json").read_text())
    assert status["workers"] and all(w["state"] == "stopped" for w in status["workers"])


def _bomb_png() -> bytes:
    """A tiny PNG whose header claims 20000 x 20000 pixels."""
    data = bytearray(png_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", 20000, 20000)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17]))
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def test_every_bad_input_is_filed_as_failed_with_a_reason(root: Path) -> None:
    inbox = root / "inbox"
    outside = root / "outside.png"
    outside.write_bytes(png_bytes())
    good = png_bytes()
    bad_contents: dict[str, Callable[[Path], None]] = {
        "zero": lambda p: p.write_bytes(b""),
        "truncated": lambda p: p.write_bytes(good[: len(good) // 2]),
        "notimage": lambda p: p.write_text("hello, I am text"),
        "bomb": lambda p: p.write_bytes(_bomb_png()),
        "huge": lambda p: p.write_bytes(png_bytes(width=90)),  # over --max-edge 64
        "fifo": lambda p: os.mkfifo(p),
        "symlink": lambda p: p.symlink_to(outside),
    }
    reasons = {
        "zero": "empty",
        "truncated": "cannot decode",
        "notimage": "not an image",
        "bomb": "decompression bomb",
        "huge": "edge-length cap",
        "fifo": "not a regular file",
        "symlink": "outside the inbox",
        "unknownkey": "unknown parameter(s) stepz",
        "badvalue": "steps: expected a number",
        "badjson": "not valid JSON",
        "escape": "init: '../../outside.png' leaves the job",
        "weightsfile": "weights: '/etc/passwd' is not allowed",
        "retried": "gave up after 3 attempts",
    }
    if os.geteuid() != 0:  # root reads files whatever their mode
        bad_contents["unreadable"] = lambda p: (p.write_bytes(good), p.chmod(0))
        reasons["unreadable"] = "not readable"
    for name, make in bad_contents.items():
        (inbox / f"{name}.style.png").write_bytes(png_bytes("style"))
        make(inbox / f"{name}.content.png")
    drop_pair(inbox, "unknownkey", {"stepz": 1})
    drop_pair(inbox, "badvalue", {"steps": "many"})
    drop_pair(inbox, "escape", {"init": "../../outside.png"})
    drop_pair(inbox, "weightsfile", {"weights": "/etc/passwd"})
    drop_pair(inbox, "badjson")
    (inbox / "badjson.json").write_text("{steps: 1")
    retried = inbox / "retried"
    retried.mkdir()
    (retried / "content.png").write_bytes(good)
    (retried / "style.png").write_bytes(png_bytes("style"))
    (retried / ".nst-attempts.json").write_text('{"attempts": 3, "last_error": "boom"}')
    time.sleep(0.05)
    drop_pair(inbox, "good")  # the newest: taken last, after every bad one
    daemon = run_once(root, "--max-edge", "64")
    assert names(root / "done") == ["good"]
    assert_clean_outbox(root, ["good"])
    assert names(root / "failed", ".error.json") == sorted(f"{n}.error.json" for n in reasons)
    for name, reason in reasons.items():
        record = json.loads((root / "failed" / f"{name}.error.json").read_text())
        assert reason in record["reason"], (name, record["reason"])
        assert (root / "failed" / name).is_dir()  # the inputs are kept
    assert len(daemon.events("failed")) == len(reasons)
    assert names(inbox) == ["status.json"]


def test_sigterm_lets_the_job_finish_within_the_grace_period(root: Path) -> None:
    drop_pair(root / "inbox", "long", {"steps": 1000, "max_seconds": 2})
    daemon = Daemon(root, "--grace", "60")
    daemon.wait_for(lambda: bool(daemon.events("started")))
    assert daemon.stop() == 0
    assert names(root / "done") == ["long"]
    assert_clean_outbox(root, ["long"])
    # The same drop again: its output exists with the same parameter hash, so it is not redone.
    drop_pair(root / "inbox", "long", {"steps": 1000, "max_seconds": 2})
    again = run_once(root)
    assert [e["job"] for e in again.events("skipped")] == ["long"] and not again.events("done")
    assert names(root / "done") == ["long", "long~2"]


def test_sigterm_after_the_grace_period_requeues_the_job(root: Path) -> None:
    drop_pair(root / "inbox", "long", {"steps": 1000, "max_seconds": 60})
    daemon = Daemon(root, "--grace", "0.5")
    daemon.wait_for(lambda: bool(daemon.events("started")))
    assert daemon.stop() == 0
    # Nothing lost, nothing half-written: the job is back in the inbox as a job folder.
    kept = names(root / "inbox" / "long")
    assert kept == [".nst-attempts.json", "content.png", "params.json", "style.png"]
    assert names(root / "outbox") == [] and names(root / "done") == []
    attempts = json.loads((root / "inbox" / "long" / ".nst-attempts.json").read_text())
    assert attempts["attempts"] == 0  # a shutdown is not the job's fault
    assert daemon.events("requeued")


def test_a_hundred_jobs_dropped_at_once_all_finish(root: Path) -> None:
    jobs = [f"n{i:03d}" for i in range(100)]
    for job in jobs:
        drop_pair(root / "inbox", job)
    daemon = run_once(root, "--settle", "0.2")
    assert len(daemon.events("done")) == 100
    assert names(root / "done") == jobs
    assert_clean_outbox(root, jobs)


def test_status_command_reports_and_fails_when_stale(root: Path) -> None:
    inbox = root / "inbox"
    assert runner.invoke(app, ["status", str(inbox)]).exit_code == 1  # no daemon yet
    work = root / "work"
    for worker, age in (("live", 1.0), ("old", 300.0)):
        (work / worker).mkdir(parents=True)
        write_record(work / worker, WorkerStatus(worker, done=3, queue_depth=2))
        record = json.loads((work / worker / ".worker.json").read_text())
        record["updated"] -= age
        (work / worker / ".worker.json").write_text(json.dumps(record))
    write_summary(inbox / "status.json", work)
    shown = runner.invoke(app, ["status", str(inbox), "--max-age", "60"])
    assert shown.exit_code == 0 and "live: starting" in shown.output and "done 3" in shown.output
    assert runner.invoke(app, ["status", str(inbox), "--max-age", "60", "--local"]).exit_code == 0
    stale = runner.invoke(app, ["status", str(inbox), "--max-age", "0.5"])
    assert stale.exit_code == 1 and "no live worker reported" in stale.output
    as_json = json.loads(runner.invoke(app, ["status", str(inbox), "--json"]).stdout)
    assert sorted(w["worker_id"] for w in as_json["workers"]) == ["live", "old"]


def test_batch_size_runs_jobs_of_one_size_together(root: Path) -> None:
    jobs = [f"b{i}" for i in range(4)]
    for job in jobs:
        drop_pair(root / "inbox", job, {"style_weight": 5 + len(job)})
    daemon = run_once(root, "--batch-size", "4")
    started = daemon.events("started")
    assert len(started) == 4 and {e.get("batch") for e in started} == {4}
    assert len(daemon.events("done")) == 4
    assert_clean_outbox(root, jobs)


def test_sigterm_cancels_at_grace_plus_one_step_also_between_host_reads(root: Path) -> None:
    """The grace is checked before every optimizer step, not only when the loop reads losses
    back (every 25 steps on a GPU; here ``sync_every`` makes that one read per job): a job
    far longer than the grace stops within grace + one step (plus the process's exit)."""
    params = {"steps": 3000, "sync_every": 3000, "size": 96, "scales": 2, "scale_steps": 3}
    drop_pair(root / "inbox", "slow", params)
    daemon = Daemon(root, "--grace", "1")
    try:
        daemon.wait_for(lambda: bool(daemon.events("started")))
        time.sleep(0.5)  # under way
        start = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=30) == 0, daemon.log_text()
        seconds = time.monotonic() - start
    finally:
        daemon.proc.kill()
    assert seconds < 1 + 6, daemon.log_text()  # grace 1 s, a step well under 1 s, exit ~1 s
    assert [e["reason"] for e in daemon.events("requeued")] == ["shutdown grace period over"]
    assert names(root / "outbox") == [] and names(root / "inbox") == ["slow", "status.json"]


def test_status_counts_only_live_workers(root: Path) -> None:
    """A killed daemon is not healthy once its pid is gone (two heartbeats missed), although
    status.json still says "idle"; the next daemon marks it dead there; a stopped one is not
    healthy either, with or without --max-age."""
    inbox = str(root / "inbox")
    first = Daemon(root, tag="first")
    first.wait_for(lambda: bool(first.events("watching")))
    assert runner.invoke(app, ["status", inbox, "--max-age", "60", "--local"]).exit_code == 0
    first.proc.kill()
    first.proc.wait()
    time.sleep(1.5)  # three heartbeats of 0.5 s missed; --stale-after (2 s) not yet reached
    shown = runner.invoke(app, ["status", inbox, "--max-age", "60", "--local"])
    assert shown.exit_code == 1 and "no live local worker" in shown.output, shown.output
    assert f"dead (pid {first.proc.pid} gone)" in shown.output
    second = Daemon(root, tag="second")

    def summary() -> dict[str, Any]:
        return json.loads((root / "inbox" / "status.json").read_text())

    try:
        second.wait_for(lambda: bool(second.events("dead")))
        expected = {first.proc.pid: "dead", second.proc.pid: "idle"}
        second.wait_for(lambda: {w["pid"]: w["state"] for w in summary()["workers"]} == expected)
        assert summary()["live"] == 1
        assert runner.invoke(app, ["status", inbox]).exit_code == 0
    finally:
        assert second.stop() == 0
    stopped = runner.invoke(app, ["status", inbox])
    assert stopped.exit_code == 1 and "no live worker" in stopped.output


def test_an_incomplete_job_is_logged_once_and_shown_in_status(root: Path) -> None:
    inbox = root / "inbox"
    daemon = Daemon(root)

    def incomplete() -> list[str]:
        return [j["job"] for j in json.loads((inbox / "status.json").read_text())["incomplete"]]

    try:
        daemon.wait_for(lambda: bool(daemon.events("watching")))
        (inbox / "lone.content.png").write_bytes(png_bytes())
        (inbox / "half").mkdir()
        (inbox / "half" / "style.png").write_bytes(png_bytes("style"))
        daemon.wait_for(lambda: len(daemon.events("incomplete")) == 2)
        time.sleep(2.5)  # more scans (--rescan 1) and heartbeats: still one line per job
        logged = {e["job"]: (e["missing"], e["files"]) for e in daemon.events("incomplete")}
        assert len(daemon.events("incomplete")) == 2
        assert logged == {
            "lone": (["style"], ["lone.content.png"]),
            "half": (["content"], ["half/"]),
        }
        daemon.wait_for(lambda: incomplete() == ["half", "lone"])
        shown = runner.invoke(app, ["status", str(inbox)])
        assert shown.exit_code == 0 and "incomplete job lone: no style" in shown.output
        (inbox / "lone.style.png").write_bytes(png_bytes("style"))  # completed: it runs
        daemon.wait_for(lambda: bool(daemon.events("done")))
        daemon.wait_for(lambda: incomplete() == ["half"])
    finally:
        assert daemon.stop() == 0
    assert len(daemon.events("incomplete")) == 2 and names(root / "done") == ["lone"]


def test_once_logs_the_incomplete_jobs_it_leaves_behind(root: Path) -> None:
    drop_pair(root / "inbox", "whole")
    (root / "inbox" / "lone.style.png").write_bytes(png_bytes("style"))
    daemon = run_once(root)
    assert [e["job"] for e in daemon.events("done")] == ["whole"]
    left = [(e["job"], e["missing"]) for e in daemon.events("incomplete")]
    assert left == [("lone", ["content"])]
    assert names(root / "inbox") == ["lone.style.png", "status.json"]


def test_a_dropped_video_pair_becomes_a_stylized_clip(root: Path) -> None:
    inbox = root / "inbox"
    tiny_clip(inbox / "pan.content.mp4", frames=3)
    swirl_painting(40, 1, 60).save(inbox / "pan.style.jpg")
    (inbox / "pan.json").write_text(json.dumps({"temporal_weight": 50, "frame_steps": 1}))
    folder = inbox / "folded"  # the job-folder convention
    folder.mkdir()
    tiny_clip(folder / "content.mov", frames=2)
    (folder / "style.png").write_bytes(png_bytes("style"))
    drop_pair(inbox, "still", {"frame_steps": 1})  # a clip setting on an image: refused
    daemon = run_once(root)
    assert names(root / "outbox") == ["folded.json", "folded.mp4", "pan.json", "pan.mp4"]
    record = json.loads((root / "outbox" / "pan.json").read_text())
    assert record["video"]["flow"] == "opencv-dis-medium"
    assert record["video"]["temporal_weight"] == 50.0 and record["video"]["frame_steps"] == 1
    assert [f["steps"] for f in record["frames"]] == [1, 1, 1]
    assert record["input"]["size"] == [32, 24]
    assert names(root / "done") == ["folded", "pan"]
    assert (root / "done" / "pan" / "content.mp4").is_file()
    assert names(root / "failed") == ["still", "still.error.json"]
    (failed,) = daemon.events("failed")
    assert "frame_steps: only for a video content" in str(failed["reason"])
    done = {e["job"]: e for e in daemon.events("done")}
    assert done["pan"]["frames"] == 3 and done["folded"]["frames"] == 2
