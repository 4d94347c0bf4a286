"""The CLI as a user runs it: CliRunner for most cases, a real subprocess for Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from unittest.mock import ANY

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from nst_batch import __version__
from nst_batch.cli import app
from nst_batch.engine.weights import BUNDLED_SHA256
from tests.test_images import bad_inputs

runner = CliRunner()


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


def test_stylize_writes_image_and_sidecar(pair: tuple[Path, Path], tmp_path: Path) -> None:
    content, style = pair
    out = tmp_path / "out.png"
    result = invoke("stylize", content, style, "-o", out, "--size", 48, "--steps", 4, "--seed", 3)
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (48, 32)  # long edge 48, content is 3:2
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["parameters"]["size"] == 48 and meta["parameters"]["seed"] == 3
    assert meta["parameters"]["optim"]["steps"] == 4
    assert meta["weights"] == {
        "source": "bundled",
        "sha256": BUNDLED_SHA256,
        "preprocessing": meta["weights"]["preprocessing"],
    }
    assert meta["inputs"]["content"][0]["original_size"] == [96, 64]
    assert meta["inputs"]["content"][0]["size"] == [48, 32]
    assert meta["inputs"]["styles"][0]["size"] == [48, 48]  # style at the output's long edge
    assert meta["pyramid"] == [{"long_edge": 48, "steps": 4, "seconds_per_iteration": ANY}]
    assert meta["stop_reason"] == "steps"
    assert meta["output"]["size"] == [48, 32]
    assert meta["device"] == "cpu" and meta["torch_version"] == torch.__version__
    assert meta["steps_completed"] == 4 and meta["interrupted"] is False
    assert meta["seconds_per_iteration"] > 0 and meta["wall_seconds"] > 0
    assert [h["step"] for h in meta["loss_history"]] == [1, 2, 3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["content.png", "style.jpg", "out.png", "out.json"]
    )


@pytest.mark.parametrize("suffix", [".jpg", ".webp"])
def test_output_format_by_extension(pair: tuple[Path, Path], tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"out{suffix}"
    result = invoke("stylize", *pair, "-o", out, "--size", 32, "--steps", 1)
    assert result.exit_code == 0, result.output
    assert Image.open(out).format == {".jpg": "JPEG", ".webp": "WEBP"}[suffix]


def test_each_bad_image_exits_1_with_one_line(pair: tuple[Path, Path], tmp_path: Path) -> None:
    content, style = pair
    (tmp_path / "bad").mkdir()
    for case, (bad, fragment) in bad_inputs(tmp_path / "bad").items():
        for args in ((bad, style), (content, bad)):
            out = tmp_path / "out.png"
            result = invoke("stylize", *args, "-o", out, "--size", 32, "--steps", 1)
            assert result.exit_code == 1, (case, result.output)
            lines = result.output.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error:"), (case, result.output)
            assert fragment in result.output, case
            assert not out.exists(), case


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["-o", "out.gif"], "unsupported output format"),
        (["-o", "content.png/out.png"], "content.png is not a folder"),  # missing ones are made
        (["-o", "out.png", "--steps", "0"], "steps must be at least 1"),
        (["-o", "out.png", "--size", "4"], "size must be between"),
        (["-o", "out.png", "--style-weight", "-1"], "must not be negative"),
        (["-o", "out.png", "--weights", "nowhere.pth"], "does not exist"),
        (["-o", "out.png", "--weights", "vgg.h5"], "expected 'bundled'"),
        (["-o", "out.png", "--init", "nowhere.png"], "'nowhere.png' is not content, noise"),
    ],
)
def test_bad_settings_exit_1(
    pair: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args, fragment
) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("stylize", *pair, *args)
    assert result.exit_code == 1, result.output
    assert fragment in result.output
    assert not (tmp_path / "out.png").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_a_clear_error(pair: tuple[Path, Path], tmp_path: Path) -> None:
    result = invoke("stylize", *pair, "-o", tmp_path / "o.png", "--device", "cuda")
    assert result.exit_code == 1 and "no CUDA GPU" in result.output


def test_usage_errors_exit_2(pair: tuple[Path, Path], tmp_path: Path) -> None:
    result = invoke("stylize", *pair, "-o", tmp_path / "o.png", "--optimizer", "sgd")
    assert result.exit_code == 2


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"nst-batch {__version__}"


def test_demo_runs_on_built_in_inputs(tmp_path: Path) -> None:
    result = invoke("demo", "-o", tmp_path, "--size", 32, "--steps", 2)
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "content.png").size == (512, 600)  # matplotlib's Grace Hopper
    assert Image.open(tmp_path / "style.png").size == (512, 512)
    assert Image.open(tmp_path / "stylized.png").size == (27, 32)
    assert (tmp_path / "stylized.json").is_file()


@pytest.mark.parametrize(
    ("command", "sig"),
    [("stylize", signal.SIGINT), ("stylize", signal.SIGTERM), ("demo", signal.SIGTERM)],
)
def test_ctrl_c_saves_best_image_and_exits_130(
    pair: tuple[Path, Path], tmp_path: Path, command: str, sig: signal.Signals
) -> None:
    """A real process and a real SIGINT (Ctrl-C) or SIGTERM (docker stop), sent once
    optimization is under way: the best image so far is saved and the exit status is 130."""
    out = tmp_path / ("out.png" if command == "stylize" else "stylized.png")
    cmd = [sys.executable, "-m", "nst_batch", command, "--size", "48", "--steps", "100000"]
    cmd += [*map(str, pair), "-o", str(out)] if command == "stylize" else ["-o", str(tmp_path)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # A child of a background shell inherits SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler: give it the default disposition, as a terminal would.
    proc = subprocess.Popen(
        cmd,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # non-terminal stderr gets plain progress lines
            if line.startswith("step "):
                break
        proc.send_signal(sig)
        rest = proc.stderr.read()
        code = proc.wait(timeout=60)
    finally:
        proc.kill()
    assert code == 130, rest
    assert "interrupted; saved best image" in rest
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["interrupted"] is True and meta["steps_completed"] >= 1
    assert Image.open(out).size == ((48, 32) if command == "stylize" else (41, 48))


def test_weights_command_reports_the_source() -> None:
    result = invoke("weights")
    assert result.exit_code == 0, result.output
    assert f"sha256:        {BUNDLED_SHA256}" in result.output
    assert "conv layers:   16" in result.output
    assert invoke("weights", "--weights", "nowhere.pth").exit_code == 1


def test_init_from_an_image_file(pair: tuple[Path, Path], tmp_path: Path) -> None:
    content, style = pair
    out = tmp_path / "from-style.png"
    result = invoke(
        "stylize", content, style, "-o", out, "--size", 32, "--steps", 1, "--init", style
    )
    assert result.exit_code == 0, result.output
    assert json.loads(out.with_suffix(".json").read_text())["parameters"]["init"] == str(style)


def test_too_elongated_for_the_network_is_a_clear_error(tmp_path: Path) -> None:
    """A 400x30 content at 32 px would be 32x2 px: refused up front, not a max-pool crash."""
    content, style = tmp_path / "strip.png", tmp_path / "style.png"
    Image.new("RGB", (400, 30), (90, 120, 200)).save(content)
    Image.new("RGB", (40, 40), (200, 120, 90)).save(style)
    out = tmp_path / "out.png"
    result = CliRunner().invoke(
        app, ["stylize", str(content), str(style), "-o", str(out), "--size", "32"]
    )
    assert result.exit_code == 1
    assert "short edge of at least 16 px" in result.output and not out.exists()


def test_key_value_defaults_are_kept_beside_the_named_flags() -> None:
    """`watch --param size=64` (no --size) and `run --set ...`: a KEY=VALUE is never dropped."""
    from nst_batch.cli.options import batch_defaults as _defaults
    from nst_batch.errors import ConfigError

    flags = {"size": None, "steps": 3}
    assert _defaults(flags, ["size=64", " style_weight = 5"], "--param") == {
        "steps": 3,
        "size": "64",
        "style_weight": "5",
    }
    with pytest.raises(ConfigError, match="--set expects KEY=VALUE"):
        _defaults(flags, ["size"], "--set")


def test_stylize_help_shows_every_default_and_no_markup_is_eaten() -> None:
    result = CliRunner().invoke(app, ["stylize", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.replace("│", " ").split())
    for option, default in [
        ("--steps N", "(default: 300; presets change it)"),
        ("--optimizer <lbfgs|adam>", "(default: lbfgs)"),
        ("--content-weight W", "(default: 1)"),
        ("--style-weight W", "(default: 45)"),
        ("--tv-weight W", "(default: 1)"),
        ("--init content|noise|PATH", "(default: content)"),
        ("--device auto|cpu|cuda[:N]|mps", "(default: auto)"),
        ("--weights bundled|torchvision|PATH", "(default: bundled)"),
        ("--pooling <max|avg>", "(default: max; gatys preset: avg)"),
        ("--size PX", "(default: 512)"),
    ]:
        assert option in text, option
        assert default in text[text.index(option) :], (option, default)
    assert not re.search(r" \.(\s|$)", text)  # what rich left of "[preset]"
    for alias in ("--num-steps", "--original-colors", "--preserve-color", "--style-blend-weights"):
        assert not re.search(re.escape(alias) + r"(?![\w-])", text), alias  # hidden
    for command in ("run", "watch", "verify", "score"):
        help_text = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
        assert not re.search(r" \.(\s|$)", " ".join(help_text.split())), command


def test_hidden_aliases_of_the_peers_flags(pair: tuple[Path, Path], tmp_path: Path) -> None:
    content, style = pair
    out = tmp_path / "o.png"
    result = invoke(
        "stylize", content, style, "--style", style, "-o", out, "--size", 32, "--num-steps", 2,
        "--original-colors", "--style-blend-weights", "3,1", "--init", "random",
        "--targets-backend", "torch",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    params = json.loads(out.with_suffix(".json").read_text())["parameters"]
    assert params["optim"]["steps"] == 2 and params["preserve_colors"] is True
    assert params["style_blend"] == [3.0, 1.0] and params["init"] == "noise"
    result = invoke("stylize", content, style, "-o", out, "--preserve-color", "--steps", 1,
                    "--size", 32, "--targets-backend", "torch")  # fmt: skip
    assert result.exit_code == 0, result.output
    clash = invoke("stylize", content, style, "-o", out, "--steps", 3, "--num-steps", 4)
    assert clash.exit_code == 2 and "disagree" in clash.output


def test_dry_run_in_a_pipe_prints_whole_paths(pair: tuple[Path, Path], tmp_path: Path) -> None:
    deep = tmp_path / ("a-rather-long-folder-name-" * 4) / "and-another-long-one"
    deep.mkdir(parents=True)
    content, style = (deep / p.name for p in pair)
    for src, dst in zip(pair, (content, style), strict=True):
        dst.write_bytes(src.read_bytes())
    manifest = deep / "jobs.csv"
    manifest.write_text(f"content,style,output\n{content},{style},{deep / 'out.png'}\n")
    result = invoke("run", manifest, "--dry-run")
    assert result.exit_code == 0, result.output
    assert str(content) in result.output and str(deep / "out.png") in result.output


def test_plain_progress_lines_come_every_n_steps_or_every_few_seconds() -> None:
    from nst_batch.cli.common import log_due
    from nst_batch.engine.optimize import Progress

    now = [0.0]
    due = log_due(10, seconds=5.0, clock=lambda: now[0])

    def at(step: int, seconds: float, total: int = 100) -> bool:
        now[0] = seconds
        return due(Progress(step, total, 1.0, 0.0, 0.0, 0.0, seconds))

    assert at(1, 0.0)  # the first step
    assert not at(2, 1.0)
    assert at(3, 6.0)  # 5 s since the last line
    assert not at(4, 7.0)
    assert at(10, 8.0)  # every tenth of the steps
    assert not at(11, 12.0)
    assert at(12, 13.5)
    assert at(100, 13.6)  # the last step
