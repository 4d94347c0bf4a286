"""What the tool writes and refuses to write: file modes under any umask, never over an input,
output folders checked before any work, the pixel limit; bad settings as one error line."""

from __future__ import annotations

import importlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import nst_batch.images as images_module
from nst_batch import ManifestConfig, run_manifest
from nst_batch.cli import app
from nst_batch.engine.model import resolve_device
from nst_batch.engine.weights import BUNDLED, load_weights
from nst_batch.errors import ConfigError, ImageError
from nst_batch.export import ExportConfig, export_onnx
from nst_batch.images import open_rgb, write_atomic
from nst_batch.params import build_config, configs_from_params
from nst_batch.watcher.config import WatchConfig
from nst_batch.watcher.inbox import Claimed
from nst_batch.watcher.intake import build_job
from tests.conftest import content_picture
from tests.test_watcher import drop_pair, names, run_once

runner = CliRunner()
stylize_module = importlib.import_module("nst_batch.jobs.run")  # where the jobs call the loop
FAST = ["--size", "32", "--steps", "2", "--optimizer", "adam", "--targets-backend", "torch"]


def invoke(*args: object) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result: Any, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return " ".join(result.output.split())


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def modes(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode)
        for p in folder.rglob("*")
        if p.is_file()
    }


# -- file modes ----------------------------------------------------------------------------------


def test_every_file_written_has_the_mode_open_gives(
    umask: int, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out" / "result.png"
    result = invoke("stylize", *pair, "-o", out, *FAST, "--save-every", 1, "--sheet")
    assert result.exit_code == 0, result.output
    manifest = tmp_path / "jobs.csv"
    manifest.write_text(f"content,style,output\n{pair[0]},{pair[1]},out/run.png\n")
    defaults = {"size": 32, "steps": 1, "optimizer": "adam", "targets_backend": "torch"}
    run_manifest(manifest, ManifestConfig(defaults=defaults))
    write_atomic(tmp_path / "plain.bin", b"x")
    load_weights(BUNDLED, cache_dir=tmp_path / "cache")  # the decoded-weights cache
    (tmp_path / "onnx").mkdir()
    export_onnx(tmp_path / "onnx" / "m.onnx", ExportConfig(("relu1_1",)))

    found = modes(tmp_path)
    written = [
        "out/result.png",
        "out/result.json",
        "out/result.0001.png",
        "out/result.sheet.png",
        "out/run.png",
        "out/run.json",
        "jobs.report.json",
        "jobs.report.csv",
        "plain.bin",
        "onnx/m.onnx",
        "onnx/m.onnx.data",
    ]
    assert set(written) <= set(found), sorted(found)
    assert [p for p in found if p.startswith("cache/vgg19-bundled-")]
    wrong = {p: oct(m) for p, m in found.items() if m != 0o666 & ~umask}
    assert not wrong, wrong


def test_watch_outbox_status_and_error_files_have_the_mode_open_gives(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    drop_pair(tmp_path / "inbox", "good")
    drop_pair(tmp_path / "inbox", "bad", {"stepz": 1})
    before = os.umask(0o002)
    try:
        run_once(tmp_path)
    finally:
        os.umask(before)
    found = modes(tmp_path)
    written = ("outbox/good.png", "outbox/good.json", "inbox/status.json", "failed/bad.error.json")
    for path in written:
        assert found[path] == 0o664, (path, oct(found[path]))


# -- never over an input -------------------------------------------------------------------------


def test_stylize_refuses_to_overwrite_its_inputs(pair: tuple[Path, Path], tmp_path: Path) -> None:
    content, style = pair
    os.link(content, tmp_path / "hardlink.png")
    (tmp_path / "symlink.png").symlink_to(style)
    (tmp_path / "sub").mkdir()
    before = {p: p.read_bytes() for p in pair}
    for out in (
        content,
        style,
        tmp_path / "sub" / ".." / content.name,  # another spelling
        tmp_path / "hardlink.png",
        tmp_path / "symlink.png",
    ):
        message = one_error_line(invoke("stylize", content, style, "-o", out, *FAST))
        assert "would overwrite the input" in message, out
    assert {p: p.read_bytes() for p in pair} == before
    assert not content.with_suffix(".json").exists()


def test_init_image_is_an_input_too(pair: tuple[Path, Path], tmp_path: Path) -> None:
    init = tmp_path / "start.png"
    content_picture(32, 32).save(init)
    result = invoke("stylize", *pair, "-o", init, "--init", init, *FAST)
    assert "would overwrite the input" in one_error_line(result)


# -- output folders ------------------------------------------------------------------------------


def test_missing_output_folders_are_created(pair: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "out.png"
    result = invoke("stylize", *pair, "-o", out, *FAST)
    assert result.exit_code == 0, result.output
    assert out.is_file() and out.with_suffix(".json").is_file()


def test_unusable_output_folder_fails_before_any_work(
    pair: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("optimized although the output cannot be written")

    monkeypatch.setattr(stylize_module, "stylize_batch_tensors", no_work)
    (tmp_path / "afile").write_text("x")
    message = one_error_line(invoke("stylize", *pair, "-o", tmp_path / "afile" / "o.png", *FAST))
    assert "is not a folder" in message

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # Root may write anywhere (mode bits do not stop it), so the refusal is simulated for it.
    monkeypatch.setattr(
        images_module.os,
        "access",
        lambda path, mode: False if Path(path) == locked else real_access(path, mode),
    )
    locked.chmod(0o500)
    try:
        message = one_error_line(invoke("stylize", *pair, "-o", locked / "o.png", *FAST))
    finally:
        locked.chmod(0o700)
    assert f"folder {locked} is not writable" in message


# -- the pixel limit -----------------------------------------------------------------------------


def test_max_pixels_overrides_the_bomb_limit(
    pair: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # 96x64 content = 6144 px: "a bomb"
    content, style = pair
    with pytest.raises(ImageError, match="--max-pixels"):
        open_rgb(content)
    assert open_rgb(content, max_pixels=10_000).size == (96, 64)
    assert Image.MAX_IMAGE_PIXELS == 2000  # Pillow's own limit is left as it was
    with pytest.raises(ImageError, match="decompression bomb"):
        open_rgb(content, max_pixels=5000)

    out = tmp_path / "o.png"
    assert "decompression bomb" in one_error_line(invoke("stylize", *pair, "-o", out, *FAST))
    result = invoke("stylize", *pair, "-o", out, *FAST, "--max-pixels", 100_000)
    assert result.exit_code == 0, result.output
    manifest = tmp_path / "jobs.csv"
    manifest.write_text(f"content,style,output,max_pixels\n{content},{style},m.png,100000\n")
    defaults = {"size": 32, "steps": 1, "optimizer": "adam", "targets_backend": "torch"}
    report = run_manifest(manifest, ManifestConfig(defaults=defaults))
    assert [r.status for r in report.rows] == ["done"]
    # The limit decides which inputs are accepted, not the result: same parameter hash.
    assert json.loads((tmp_path / "m.json").read_text())["parameters"]["max_pixels"] == 100_000
    # A watch job's NAME.json raises it too: the intake check reads the job's settings first.
    folder = tmp_path / "job"
    folder.mkdir()
    for role, path in (("content", content), ("style", style)):
        (folder / f"{role}.png").write_bytes(path.read_bytes())
    claimed = Claimed("job", folder, "folder")
    watch = WatchConfig(inbox=tmp_path / "inbox")
    with pytest.raises(ImageError, match="decompression bomb"):
        build_job(claimed, watch)
    (folder / "params.json").write_text('{"max_pixels": 100000}')
    assert build_job(claimed, watch).config.max_pixels == 100_000


# -- bad settings: one error line, early --------------------------------------------------------


def test_all_weights_zero_and_missing_devices_are_config_errors(
    pair: tuple[Path, Path], tmp_path: Path
) -> None:
    zero = ["--content-weight", 0, "--style-weight", 0, "--tv-weight", 0]
    out = tmp_path / "o.png"
    assert "nothing to optimize" in one_error_line(invoke("stylize", *pair, "-o", out, *zero))
    with pytest.raises(ConfigError, match="nothing to optimize"):
        configs_from_params({"content_weight": 0, "style_weight": "0", "tv_weight": 0})
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        build_config(device="tpu")
    if not torch.backends.mps.is_available():
        with pytest.raises(ConfigError, match="no MPS"):
            resolve_device("mps")
        message = one_error_line(invoke("stylize", *pair, "-o", out, *FAST, "--device", "mps"))
        assert "device 'mps' asked for" in message
    assert not out.exists()


def test_watch_files_bad_settings_as_failed_not_retried(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    drop_pair(inbox, "zero", {"content_weight": 0, "style_weight": 0, "tv_weight": 0})
    reasons = {"zero": "nothing to optimize"}
    if not torch.backends.mps.is_available():
        drop_pair(inbox, "mps", {"device": "mps"})
        reasons["mps"] = "device 'mps' asked for"
    run_once(tmp_path)
    assert names(tmp_path / "failed", ".error.json") == sorted(f"{n}.error.json" for n in reasons)
    for name, reason in reasons.items():
        record = json.loads((tmp_path / "failed" / f"{name}.error.json").read_text())
        assert reason in record["reason"] and record["attempts"] == 1, record
        assert record["traceback"] is None  # a bad setting, not a crash


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--style-blend", "0,0"], "at least one weight must be positive"),
        (["--init", "bogus"], "is not content, noise (or random) or an image file"),
        (["--device", "tpu"], "unknown device 'tpu'"),
    ],
)
def test_helpful_messages(
    pair: tuple[Path, Path], tmp_path: Path, args: list[str], fragment: str
) -> None:
    style_args = ["--style", pair[1]] if args[0] == "--style-blend" else []
    result = invoke("stylize", *pair, *style_args, "-o", tmp_path / "o.png", *FAST, *args)
    assert fragment in one_error_line(result)


def test_save_every_must_not_be_negative(pair: tuple[Path, Path], tmp_path: Path) -> None:
    result = invoke("stylize", *pair, "-o", tmp_path / "o.png", *FAST, "--save-every", -3)
    assert "save_every must not be negative (0 = off), not -3" in one_error_line(result)
    with pytest.raises(ConfigError, match="save_every must not be negative"):
        configs_from_params({"save_every": -3})


def test_init_random_is_noise() -> None:
    assert build_config(init="random").init == "noise"
    assert configs_from_params({"init": "random"})[0].init == "noise"
    assert build_config(init="image").init == "content"
