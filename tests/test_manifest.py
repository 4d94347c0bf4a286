"""Manifest runs: formats, up-front validation, resume, failures, sharding, reports, Ray."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import nst_batch.jobs.run as jobs_module
import nst_batch.manifest.run as manifest_module
from nst_batch import ManifestConfig, RunCallbacks, Shard, run_manifest
from nst_batch.cli import app
from nst_batch.demo import swirl_painting
from nst_batch.distributed import run_on_ray
from nst_batch.errors import ConfigError, ManifestError
from nst_batch.manifest import plan_manifest, shard_from_env
from tests.conftest import content_picture, tiny_clip

ROOT = Path(__file__).resolve().parents[1]
# Tiny and quick: Adam steps cost one forward/backward each; torch targets skip the ONNX export.
FAST = {"size": 32, "steps": 1, "optimizer": "adam", "targets_backend": "torch"}
FAST_FLAGS = ["--size", "32", "--steps", "1", "--set", "optimizer=adam"]
FAST_FLAGS += ["--set", "targets_backend=torch"]
runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # 32 px images on shared, busy cores: one torch thread is several times faster than two.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def invoke(*args: str | Path) -> Any:
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    """tmp/img/{c1.png, c2.jpg, s1.png, s2.jpg}; returns the folder."""
    folder = tmp_path / "img"
    folder.mkdir()
    content_picture(48, 32).save(folder / "c1.png")
    content_picture(40, 40).save(folder / "c2.jpg", quality=92)
    swirl_painting(40, seed=1, strokes=120).save(folder / "s1.png")
    swirl_painting(40, seed=2, strokes=120).save(folder / "s2.jpg", quality=92)
    return folder


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def rows(n: int) -> list[dict[str, str]]:
    pictures = [("img/c1.png", "img/s1.png"), ("img/c2.jpg", "img/s2.jpg")]
    return [
        {"content": pictures[k % 2][0], "style": pictures[k % 2][1], "output": f"out/{k}.png"}
        for k in range(n)
    ]


def sidecar(path: Path) -> dict[str, Any]:
    return json.loads(path.with_suffix(".json").read_text())


def test_csv_manifest_runs_end_to_end(images: Path, tmp_path: Path) -> None:
    manifest = write_csv(
        tmp_path / "jobs.csv",
        [
            {"content": "img/c1.png", "style": "img/s1.png", "output": "out/a.png", "steps": ""},
            # two styles in one cell; per-row override of steps
            {
                "content": "img/c2.jpg",
                "style": "img/s1.png;img/s2.jpg",
                "output": "out/b.jpg",
                "steps": "2",
            },
        ],
    )
    seen: list[str] = []
    callbacks = RunCallbacks(end=lambda o: seen.append(o.status))
    report = run_manifest(manifest, ManifestConfig(defaults=FAST), callbacks)
    assert seen == ["done", "done"] and not report.failed and not report.interrupted
    out = tmp_path / "out"
    assert Image.open(out / "a.png").size == (32, 21)  # relative to the manifest's folder
    assert Image.open(out / "b.jpg").size == (32, 32)
    assert sidecar(out / "a.png")["parameters"]["optim"]["steps"] == 1
    assert sidecar(out / "b.jpg")["parameters"]["optim"]["steps"] == 2  # the row wins
    assert len(sidecar(out / "b.jpg")["inputs"]["styles"]) == 2

    assert report.files == (tmp_path / "jobs.report.json", tmp_path / "jobs.report.csv")
    data = json.loads((tmp_path / "jobs.report.json").read_text())
    assert data["counts"]["done"] == 2 and data["shard"] is None and not data["interrupted"]
    first, second = data["jobs"]
    assert (first["line"], first["output"], first["status"]) == (2, "out/a.png", "done")
    assert second["styles"] == "img/s1.png;img/s2.jpg" and second["iterations"] == 2
    for job in data["jobs"]:
        assert job["seconds"] > 0 and job["iterations_per_s"] > 0 and job["device"] == "cpu"
        assert job["loss"] == pytest.approx(
            job["content_loss"] + job["style_loss"] + job["tv_loss"], rel=1e-4
        )
    with (tmp_path / "jobs.report.csv").open(newline="") as f:
        table = list(csv.DictReader(f))
    assert [(r["line"], r["status"], r["iterations"]) for r in table] == [
        ("2", "done", "1"),
        ("3", "done", "2"),
    ]
    assert float(table[1]["loss"]) == pytest.approx(second["loss"])


def test_jsonl_row_with_artistic_controls(images: Path, tmp_path: Path) -> None:
    manifest = write_jsonl(
        tmp_path / "jobs.jsonl",
        [
            {"content": "img/c1.png", "style": "img/s1.png", "output": "out/plain.png"},
            {
                "content": "img/c2.jpg",
                "style": ["img/s1.png", "img/s2.jpg"],
                "style_blend": [0.8, 0.2],
                "preserve_colors": True,
                "style_scale": 0.5,
                "style_layers": [["relu1_1", 0.5], "relu2_1"],
                "output": "out/controls.png",
            },
        ],
    )
    report = run_manifest(manifest, ManifestConfig(defaults=FAST))
    assert [r.status for r in report.rows] == ["done", "done"]
    meta = sidecar(tmp_path / "out" / "controls.png")
    params = meta["parameters"]
    assert params["style_blend"] == [0.8, 0.2] and params["preserve_colors"] is True
    assert params["style_scale"] == 0.5
    assert params["loss"]["style_layers"] == [["relu1_1", 0.5], ["relu2_1", 1.0]]
    assert meta["inputs"]["styles"][0]["size"] == [16, 16]  # half the output's 32 px
    assert sidecar(tmp_path / "out" / "plain.png")["parameters"]["preserve_colors"] is False


def test_validation_lists_every_problem_with_line_numbers(images: Path, tmp_path: Path) -> None:
    (tmp_path / "out" / "taken.png").mkdir(parents=True)
    (tmp_path / "img" / "empty.png").write_bytes(b"")
    Image.new("RGB", (400, 30)).save(tmp_path / "img" / "strip.png")  # 32x2 px at size 32
    manifest = write_csv(
        tmp_path / "jobs.csv",
        [
            {"content": "img/c1.png", "style": "img/s1.png", "output": "out/ok.png"},  # line 2
            {"content": "img/nope.png", "style": "img/s1.png", "output": "out/x.png"},  # 3
            {
                "content": "img/c1.png",
                "style": "img/s1.png",
                "output": "out/y.png",
                "steps": "many",
            },  # 4
            {"content": "img/c1.png", "style": "img/s1.png", "output": "out/ok.png"},  # 5
            {"content": "img/c1.png", "style": "img/s1.png", "output": "out/taken.png"},  # 6
            {"content": "img/c1.png", "style": "img/empty.png", "output": "out/ok.jpg"},  # 7
            {"content": "img/c1.png", "style": "", "output": "out/z.png", "stlye": "x"},  # 8
            {"content": "img/strip.png", "style": "img/s1.png", "output": "out/s.png"},  # 9
        ],
    )
    result = invoke("run", manifest, *FAST_FLAGS)
    assert result.exit_code == 2, result.output
    text = result.output
    assert "nothing was run" in text
    expected = [
        "line 1: unknown column(s) stlye",
        "line 3: " + str(tmp_path / "img" / "nope.png") + ": no such file",
        "line 4: steps: expected a number",
        f"line 5: output {tmp_path / 'out' / 'ok.png'} is also written by line 2",
        "line 6: output " + str(tmp_path / "out" / "taken.png") + ": is a directory",
        "line 7: " + str(tmp_path / "img" / "empty.png") + ": file is empty",
        # out/ok.jpg's sidecar is out/ok.json, like out/ok.png's
        f"line 7: output {tmp_path / 'out' / 'ok.json'} is also written by line 2",
        "line 8: style: missing",
        "line 9: the output would be 32x2 px",
    ]
    flat = " ".join(text.split())  # rich may wrap long lines
    for fragment in expected:
        assert " ".join(fragment.split()) in flat, fragment
    assert not (tmp_path / "out" / "ok.png").exists()
    assert not (tmp_path / "jobs.report.json").exists()

    bad_json = tmp_path / "jobs.jsonl"
    bad_json.write_text(
        '{"content": "img/c1.png", "style": "img/s1.png", "output": "a.png"}\n{not json\n[1, 2]\n'
    )
    with pytest.raises(ManifestError) as err:
        plan_manifest(bad_json)
    assert [line for line, _ in err.value.problems] == [2, 3]


def test_defaults_layer_row_over_command_line_over_config_file(
    images: Path, tmp_path: Path
) -> None:
    (tmp_path / "defaults.toml").write_text("steps = 5\nstyle_weight = 3.0\nsize = 40\n")
    manifest = write_csv(
        tmp_path / "jobs.csv",
        [
            {"content": "img/c1.png", "style": "img/s1.png", "output": "a.png", "steps": "3"},
            {"content": "img/c1.png", "style": "img/s1.png", "output": "b.png", "steps": ""},
        ],
    )
    config = ManifestConfig(defaults={"steps": 4}, config_file=tmp_path / "defaults.toml")
    a, b = (p.job.config for p in plan_manifest(manifest, config).jobs)
    assert (a.optim.steps, b.optim.steps) == (3, 4)
    assert a.loss.style_weight == b.loss.style_weight == 3.0 and a.size == b.size == 40
    bad = ManifestConfig(defaults={"stepz": 4})
    with pytest.raises(ManifestError, match="defaults"):
        plan_manifest(manifest, bad)


def test_dry_run_then_rerun_skips_and_force_redoes(images: Path, tmp_path: Path) -> None:
    manifest = write_csv(tmp_path / "jobs.csv", rows(2))
    result = invoke("run", manifest, "--dry-run", *FAST_FLAGS)
    assert result.exit_code == 0, result.output
    assert result.output.count("would-run") == 2 and "2 would run, 0 already done" in result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "jobs.report.json").exists()

    result = invoke("run", manifest, *FAST_FLAGS)
    assert result.exit_code == 0, result.output
    first = (tmp_path / "out" / "0.png").stat().st_mtime_ns
    result = invoke("run", manifest, "--dry-run", *FAST_FLAGS)
    assert "0 would run, 2 already done" in result.output

    report = run_manifest(manifest, ManifestConfig(defaults=FAST))
    assert [r.status for r in report.rows] == ["skipped", "skipped"]
    assert (tmp_path / "out" / "0.png").stat().st_mtime_ns == first
    changed = run_manifest(manifest, ManifestConfig(defaults={**FAST, "style_weight": 2}))
    assert [r.status for r in changed.rows] == ["done", "done"]  # other settings, other hash
    forced = run_manifest(
        manifest, ManifestConfig(defaults={**FAST, "style_weight": 2}, force=True)
    )
    assert [r.status for r in forced.rows] == ["done", "done"]


def test_resume_after_kill_leaves_no_partial_output(images: Path, tmp_path: Path) -> None:
    manifest = write_csv(tmp_path / "jobs.csv", rows(3))
    flags = ["--size", "32", "--steps", "40", "--set", "optimizer=adam"]
    flags += ["--set", "targets_backend=torch"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "nst_batch", "run", str(manifest), *flags]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = tmp_path / "out"
    try:
        deadline = time.monotonic() + 120
        while not (out / "0.json").exists():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no output after 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not (out / "2.json").exists(), "the run finished before it was killed"
    for image in out.glob("*.png"):  # whatever is there under its final name is whole
        Image.open(image).load()

    report = run_manifest(manifest, ManifestConfig(defaults={**FAST, "steps": 40}))
    statuses = {r.output: r.status for r in report.rows}
    assert statuses["out/0.png"] == "skipped" and statuses["out/2.png"] == "done"
    assert all(sidecar(out / f"{k}.png")["steps_completed"] == 40 for k in range(3))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{k}.{ext}" for k in range(3) for ext in ("png", "json")
    )  # no temp files left behind


def test_sigterm_stops_like_ctrl_c(images: Path, tmp_path: Path) -> None:
    manifest = write_csv(tmp_path / "jobs.csv", rows(2))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "nst_batch", "run", str(manifest), *FAST_FLAGS, "--steps", "500"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    try:
        for line in proc.stderr:  # non-terminal stderr: plain progress lines
            if line.strip().startswith("step 1/500"):
                proc.send_signal(signal.SIGTERM)  # how Kubernetes and Slurm stop a task
                break
        proc.stderr.read()
        assert proc.wait(timeout=60) == 130
    finally:
        proc.kill()
    data = json.loads((tmp_path / "jobs.report.json").read_text())
    assert data["interrupted"] and [j["status"] for j in data["jobs"]] == ["interrupted"] * 2
    assert not (tmp_path / "out" / "0.png").exists()


def test_shards_cover_every_job_exactly_once(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_csv(tmp_path / "jobs.csv", rows(5))
    parts = [plan_manifest(manifest, ManifestConfig(shard=Shard(i, 2))).jobs for i in range(2)]
    lines = [sorted(p.line for p in part) for part in parts]
    assert lines == [[2, 4, 6], [3, 5]]

    for name in ("JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
        monkeypatch.delenv(name, raising=False)
    assert shard_from_env(None, 2, {"JOB_COMPLETION_INDEX": "1"}) == Shard(1, 2)
    slurm = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_COUNT": "2"}
    assert shard_from_env(None, None, slurm) == Shard(1, 2)
    assert shard_from_env(None, None, {}) is None
    assert shard_from_env("0/3", None, slurm) == Shard(0, 3)  # explicit wins
    for bad in [("2/2", None), ("x", None), ("1/2", 3)]:
        with pytest.raises(ConfigError):
            shard_from_env(*bad, {})
    with pytest.raises(ConfigError, match="JOB_COMPLETION_INDEX"):
        shard_from_env(None, 2, {})

    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    result = invoke("run", manifest, "--shards", "2", "--dry-run", *FAST_FLAGS)
    assert result.exit_code == 0, result.output
    assert "2 would run" in result.output
    monkeypatch.delenv("JOB_COMPLETION_INDEX")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    result = invoke("run", manifest, *FAST_FLAGS)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["0.png", "2.png", "4.png"]
    data = json.loads((tmp_path / "jobs.report.shard-0-of-2.json").read_text())
    assert data["shard"] == "0/2" and [j["line"] for j in data["jobs"]] == [2, 4, 6]
    assert not (tmp_path / "jobs.report.json").exists()
    result = invoke("run", manifest, "--shard", "5/2", *FAST_FLAGS)
    assert result.exit_code == 2 and "shard 5/2" in result.output


def test_failing_job_is_recorded_and_the_rest_continue(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_csv(tmp_path / "jobs.csv", rows(3))
    plan = manifest_module.plan_manifest

    def plan_then_corrupt(*args: Any, **kwargs: Any) -> Any:
        found = plan(*args, **kwargs)  # valid now; the file breaks before its job runs
        (tmp_path / "img" / "c2.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
        return found

    monkeypatch.setattr(manifest_module, "plan_manifest", plan_then_corrupt)
    result = invoke("run", manifest, *FAST_FLAGS)
    assert result.exit_code == 1, result.output
    data = json.loads((tmp_path / "jobs.report.json").read_text())
    assert [j["status"] for j in data["jobs"]] == ["done", "failed", "done"]
    assert "c2.jpg" in data["jobs"][1]["reason"] and data["counts"]["failed"] == 1
    assert not (tmp_path / "out" / "1.png").exists() and (tmp_path / "out" / "2.png").exists()


def test_interrupt_writes_the_report_and_exits_130(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_csv(tmp_path / "jobs.csv", rows(3))
    run_job = jobs_module.run_job

    def interrupt_second(job: Any, *args: Any) -> Any:
        if job.output.name == "1.png":
            raise KeyboardInterrupt
        return run_job(job, *args)

    monkeypatch.setattr(jobs_module, "run_job", interrupt_second)
    result = invoke("run", manifest, *FAST_FLAGS)
    assert result.exit_code == 130, result.output
    data = json.loads((tmp_path / "jobs.report.json").read_text())
    assert data["interrupted"] is True
    assert [(j["status"], j["reason"]) for j in data["jobs"]] == [
        ("done", ""),
        ("interrupted", "interrupted; nothing written"),
        ("interrupted", "not started"),
    ]


def test_ray_actors_run_jobs_and_catch_errors_per_job(images: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    manifest = write_csv(tmp_path / "jobs.csv", rows(3))

    def corrupt(_: Any) -> None:  # after validation, before the actors start
        (tmp_path / "img" / "c2.jpg").write_bytes(b"not an image any more")

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    try:
        config = ManifestConfig(defaults=FAST)
        report = run_manifest(manifest, config, RunCallbacks(plan=corrupt), run_on_ray)
    finally:
        ray.shutdown()
    assert [r.status for r in report.rows] == ["done", "failed", "done"]
    assert "c2.jpg" in report.rows[1].reason
    data = json.loads((tmp_path / "jobs.report.json").read_text())
    assert data["counts"]["done"] == 2 and data["jobs"][0]["iterations"] == 1
    assert (tmp_path / "out" / "2.png").is_file() and not (tmp_path / "out" / "1.png").exists()


def test_batch_size_optimizes_compatible_jobs_together(images: Path, tmp_path: Path) -> None:
    """Rows 0, 2, 4 (one content shape) run as one batch, 1 and 3 as another; every job gets its
    own output, sidecar and report row, with the hash it has when run alone."""
    manifest = write_csv(tmp_path / "jobs.csv", rows(5))
    batches: list[int] = []
    callbacks = RunCallbacks(step=lambda j, p: batches.append(len(p.jobs)))
    config = ManifestConfig(defaults={**FAST, "steps": 2}, batch_size=3)
    report = run_manifest(manifest, config, callbacks)
    assert report.counts()["done"] == 5 and not report.failed
    assert set(batches) == {1}  # each job's progress is its own view of the batch ...
    data = json.loads((tmp_path / "jobs.report.json").read_text())
    assert {j["seconds"] for j in data["jobs"][0::2]} == {data["jobs"][0]["seconds"]}  # ... one run
    solo = run_manifest(manifest, dataclasses.replace(config, batch_size=1))
    assert solo.counts()["skipped"] == 5  # same parameter hash as a solo run: nothing to redo


def test_reports_are_named_after_the_manifest_and_skips_keep_their_figures(
    images: Path, tmp_path: Path
) -> None:
    a = write_csv(tmp_path / "a.csv", rows(1))
    b = write_jsonl(tmp_path / "b.jsonl", [{**rows(2)[1], "output": "out/b.png"}])
    first = run_manifest(a, ManifestConfig(defaults=FAST))
    run_manifest(b, ManifestConfig(defaults=FAST))
    assert first.files == (tmp_path / "a.report.json", tmp_path / "a.report.csv")
    reports = {name: json.loads((tmp_path / f"{name}.report.json").read_text()) for name in "ab"}
    assert [j["output"] for j in reports["a"]["jobs"]] == ["out/0.png"]
    assert [j["output"] for j in reports["b"]["jobs"]] == ["out/b.png"]

    done = reports["a"]["jobs"][0]
    again = run_manifest(a, ManifestConfig(defaults=FAST))  # every job skipped
    (row,) = again.rows
    assert row.status == "skipped"
    assert row.loss == done["loss"] and row.style_loss == done["style_loss"]
    assert row.iterations == done["iterations"] and row.device == done["device"]
    assert row.seconds is not None and row.iterations_per_s == done["iterations_per_s"]
    kept = json.loads((tmp_path / "a.report.json").read_text())["jobs"][0]
    assert kept["loss"] == done["loss"] and kept["status"] == "skipped"


def test_unknown_column_suggests_the_closest_name(images: Path, tmp_path: Path) -> None:
    manifest = write_csv(tmp_path / "jobs.csv", [{**rows(1)[0], "stpes": "3"}])
    with pytest.raises(ManifestError, match=r"stpes \(did you mean steps\?\)"):
        plan_manifest(manifest)


def test_output_over_an_input_through_a_hard_link_is_refused(images: Path, tmp_path: Path) -> None:
    os.link(images / "c1.png", tmp_path / "linked.png")
    manifest = write_csv(
        tmp_path / "jobs.csv",
        [{"content": "img/c1.png", "style": "img/s1.png", "output": "linked.png"}],
    )
    with pytest.raises(ManifestError, match="would overwrite an input of line 2"):
        plan_manifest(manifest)


def test_a_video_row_runs_beside_an_image_row_and_resumes(images: Path, tmp_path: Path) -> None:
    tiny_clip(images / "clip.mp4", frames=3)
    manifest = write_csv(
        tmp_path / "jobs.csv",
        [
            {"content": "img/c1.png", "style": "img/s1.png", "output": "out/a.png"},
            {"content": "img/clip.mp4", "style": "img/s1.png", "output": "out/clip.mp4",
             "steps": "2", "frame_steps": "1", "temporal_weight": "50"},
        ],
    )  # fmt: skip
    config = ManifestConfig(defaults=FAST, batch_size=4)  # a clip never joins a batch
    report = run_manifest(manifest, config)
    assert [r.status for r in report.rows] == ["done", "done"], report.rows
    out = tmp_path / "out"
    assert Image.open(out / "a.png").size == (32, 21)
    record = sidecar(out / "clip.mp4")
    assert record["video"]["flow"] == "opencv-dis-medium"
    assert record["video"]["temporal_weight"] == 50.0 and record["video"]["frame_steps"] == 1
    assert [f["steps"] for f in record["frames"]] == [2, 1, 1]
    assert all(f["seconds"] > 0 for f in record["frames"]) and record["clip_hash"]
    assert record["input"]["size"] == [32, 24] and not (out / "clip.mp4.work").exists()
    clip_row = report.rows[1]
    assert clip_row.output == "out/clip.mp4" and clip_row.iterations == 4
    assert clip_row.seconds is not None and clip_row.seconds > 0 and clip_row.device == "cpu"

    again = run_manifest(manifest, config)
    assert [r.status for r in again.rows] == ["skipped", "skipped"]
    assert again.rows[1].iterations == 4
    changed = write_csv(
        tmp_path / "jobs.csv",
        [{"content": "img/clip.mp4", "style": "img/s1.png", "output": "out/clip.mp4",
          "steps": "2", "frame_steps": "1", "temporal_weight": "60"}],
    )  # fmt: skip
    assert [p.done for p in plan_manifest(changed, config).jobs] == [False]


def test_bad_video_rows_are_clear_errors(images: Path, tmp_path: Path) -> None:
    tiny_clip(images / "clip.mp4", frames=2)
    manifest = write_jsonl(
        tmp_path / "jobs.jsonl",
        [
            {"content": "img/clip.mp4", "style": "img/s1.png", "output": "out/a.png"},
            {"content": "img/c1.png", "style": "img/s1.png", "output": "out/b.mp4"},
            {"content": "img/c1.png", "style": "img/s1.png", "output": "c.png",
             "frame_steps": 2},
            {"content": "img/clip.mp4", "style": "img/s1.png", "output": "d.mp4",
             "frame_steps": 0},
            {"content": "img/gone.mov", "style": "img/s1.png", "output": "e.mp4"},
        ],
    )  # fmt: skip
    with pytest.raises(ManifestError) as caught:
        plan_manifest(manifest, ManifestConfig(defaults=FAST))
    text = str(caught.value)
    assert "line 1" in text and "a video's output must be a video file" in text
    assert "line 2" in text and "out/b.mp4 is a video: its content must be a video" in text
    assert "line 3" in text and "frame_steps: only for a video row" in text
    assert "line 4" in text and "frame_steps" in text
    assert "line 5" in text and "no such video file" in text
