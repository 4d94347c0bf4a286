"""Video: flow and warping on known motion, the consistency mask on an occluder, the temporal
term, a clip resumed after a kill, audio passthrough, a corrupt file, folders in and out."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from nst_batch.cli import app
from nst_batch.demo import swirl_painting
from nst_batch.engine.temporal import masked_fill, temporal_terms
from nst_batch.errors import VideoError
from nst_batch.images import new_file_mode, to_tensor
from nst_batch.params import build_config
from nst_batch.video.flow import consistent, frame_flow, inside, optical_flow, warp
from nst_batch.video.io import ClipRange, frame_name, numbered_frames, read_clip
from nst_batch.video.run import VideoConfig, stylize_video, work_folder
from tests.conftest import content_picture

av = pytest.importorskip("av")
pytest.importorskip("cv2")

runner = CliRunner()


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth random texture (H, W, 3) in [0, 1]: something a flow can lock on to."""
    rng = np.random.default_rng(seed)
    small = rng.random((h // 4 + 2, w // 4 + 2, 3)).astype(np.float32)
    img = Image.fromarray((small * 255).astype(np.uint8)).resize((w + 8, h + 8), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32)[:h, :w] / 255


def as_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None]  # (1, 3, H, W)


def test_warp_undoes_a_known_shift() -> None:
    big = texture(72, 88)
    previous = big[4:68, 4:84]  # (64, 80, 3): previous(x, y) = big(x + 4, y + 4)
    current = big[2:66, 1:81]  # current(x, y) = big(x + 1, y + 2) = previous(x - 3, y - 2)
    flow = np.zeros((64, 80, 2), np.float32)
    flow[..., 0], flow[..., 1] = -3, -2  # pixel (x, y) of current is (x - 3, y - 2) of previous
    warped = warp(as_tensor(previous), flow)
    assert torch.allclose(warped[..., 2:, 3:], as_tensor(current)[..., 2:, 3:], atol=1e-5)
    assert not inside(flow)[:, :3].any() and not inside(flow)[:2].any()
    assert inside(flow)[2:, 3:].all()
    # DIS finds that motion (away from the edges the shift brings into view).
    found = optical_flow(as_tensor(current), as_tensor(previous))
    assert np.allclose(np.median(found[8:-8, 8:-8].reshape(-1, 2), axis=0), (-3, -2), atol=0.25)


def test_consistency_mask_marks_what_an_occluder_uncovers() -> None:
    background = texture(64, 96, seed=1)
    square = texture(20, 20, seed=2)[..., ::-1] * 0.5 + 0.5  # another texture, brighter
    frames = []
    for x0 in (30, 36):  # the square moves 6 px right over a still background
        frame = background.copy()
        frame[22:42, x0 : x0 + 20] = square
        frames.append(as_tensor(frame))
    tie = frame_flow(frames[0], frames[1])
    uncovered = tie.mask[24:40, 31:35]  # behind the square: seen in frame 2, hidden in frame 1
    far = np.concatenate([tie.mask[:14, :].ravel(), tie.mask[50:, :].ravel()])
    assert uncovered.mean() < 0.2
    assert far.mean() > 0.95
    # The round trip alone flags the disocclusion (not only the motion boundary).
    still = np.zeros_like(tie.backward)
    moved = still.copy()
    moved[22:42, 30:50] = (6, 0)  # forward flow: the square's pixels go 6 px right
    assert consistent(still, moved)[22:42, 31:35].max() == 0
    assert consistent(still, still).min() == 1


def test_temporal_term_counts_only_the_masked_pixels() -> None:
    image = torch.rand(2, 3, 8, 8, requires_grad=True)
    warped = torch.rand(1, 3, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    terms = temporal_terms(image, warped, mask)  # (B,)
    assert terms.shape == (2,)
    expected = ((image - warped) ** 2 * mask).mean(dim=(1, 2, 3))
    assert torch.allclose(terms, expected)
    terms.sum().backward()
    assert image.grad is not None and image.grad[..., 4:].abs().max() == 0
    filled = masked_fill(warped, torch.zeros_like(warped), mask)
    assert torch.equal(filled[..., :4], warped[..., :4]) and filled[..., 4:].abs().max() == 0


def moving_frames(folder: Path, count: int = 4, step: int = 4) -> Path:
    """A folder of numbered frames: the test picture panning ``step`` px per frame."""
    folder.mkdir(parents=True)
    wide = content_picture(64 + step * count, 48)
    for i in range(count):
        wide.crop((i * step, 0, i * step + 64, 48)).save(folder / f"shot{i + 1:03d}.png")
    return folder


@pytest.fixture()
def style(tmp_path: Path) -> Path:
    path = tmp_path / "style.png"
    swirl_painting(64, seed=1, strokes=300).save(path)
    return path


class Killed(Exception):
    pass


def test_a_killed_clip_resumes_from_the_next_frame(tmp_path: Path, style: Path) -> None:
    source = moving_frames(tmp_path / "in")
    output = tmp_path / "out"
    config = build_config(size=64, steps=3, device="cpu")
    video = VideoConfig(frame_steps=1, temporal_weight=100.0)
    seen: list[int] = []

    def kill_after_two(record) -> None:  # type: ignore[no-untyped-def]
        seen.append(record.index)
        if len(seen) == 2:
            raise Killed

    with pytest.raises(Killed):
        stylize_video(source, [style], output, config, video, frame_done=kill_after_two)
    work = work_folder(output)
    assert sorted(p.name for p in work.iterdir()) == [
        "frame_00001.json",
        "frame_00001.png",
        "frame_00002.json",
        "frame_00002.png",
    ]
    kept = [(work / frame_name(i)).read_bytes() for i in range(2)]
    assert not output.exists()

    seen.clear()
    result = stylize_video(source, [style], output, config, video, frame_done=seen.append)
    assert [r.index for r in seen] == [2, 3]  # went on from frame 3 (index 2)
    assert result.resumed == 2
    assert [p.name for p in numbered_frames(output)] == [frame_name(i) for i in range(4)]
    assert [(output / frame_name(i)).read_bytes() for i in range(2)] == kept
    assert not work.exists()  # removed once the output is complete
    record = json.loads(output.with_suffix(".json").read_text())
    assert record["video"]["flow"] == "opencv-dis-medium"
    assert record["video"]["temporal_weight"] == 100.0
    assert record["resumed_frames"] == 2
    assert [f["steps"] for f in record["frames"]] == [3, 1, 1, 1]
    assert [f["init"] for f in record["frames"]] == ["content", "warped", "warped", "warped"]
    assert all(f["seconds"] > 0 for f in record["frames"])
    assert all(0 < f["trusted"] <= 1 for f in record["frames"][1:])

    # Changed settings do not take the old frames.
    other = tmp_path / "other"
    stylize_video(source, [style], other, config, video, frame_done=seen.append)
    assert work_folder(other).exists() is False


def clip_with_audio(path: Path, frames: int = 6, fps: int = 6) -> None:
    """A tiny H.264 clip with an AAC tone, made with PyAV."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=16000)
        audio.layout = "mono"
        wide = np.asarray(content_picture(64 + 4 * frames, 48))
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(wide[:, 4 * i : 4 * i + 64]), format="rgb24"
            )
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        samples = int(16000 * frames / fps)
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / 16000)).astype(np.float32)
        for start in range(0, samples, 1024):
            chunk = tone[None, start : start + 1024]
            af = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(chunk), format="fltp", layout="mono"
            )
            af.sample_rate, af.pts = 16000, start
            for packet in audio.encode(af):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)


def streams(path: Path) -> tuple[list[str], int]:
    with av.open(str(path)) as container:
        kinds = [s.type for s in container.streams]
        frames = sum(1 for _ in container.decode(video=0))
    return kinds, frames


def test_video_keeps_the_audio_and_the_frame_rate(tmp_path: Path, style: Path) -> None:
    source, output = tmp_path / "clip.mp4", tmp_path / "out.mp4"
    clip_with_audio(source)
    result = runner.invoke(
        app,
        ["video", str(source), str(style), "-o", str(output), "--size", "64", "--steps", "2",
         "--start", "0.5", "--duration", "0.5", "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    kinds, frames = streams(output)
    assert kinds == ["video", "audio"]
    assert frames == 3  # 0.5 s at 6 fps
    clip = read_clip(output, ClipRange(), None)
    assert clip.fps == 6 and clip.frames[0].size == (64, 48)
    record = json.loads(output.with_suffix(".json").read_text())
    assert record["output"]["audio"] is True and record["input"]["start"] == 0.5
    assert [f["steps"] for f in record["frames"]] == [2, 1, 1]  # later: a third, at least 1
    assert not work_folder(output).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left
    # readable like any file the user writes (umask), not mkstemp's 0600
    assert output.stat().st_mode & 0o777 == new_file_mode()


def test_a_corrupt_video_is_a_clear_error(tmp_path: Path, style: Path) -> None:
    source = tmp_path / "broken.mp4"
    source.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    result = runner.invoke(app, ["video", str(source), str(style), "-o", str(tmp_path / "o.mp4")])
    assert result.exit_code == 1, result.output
    assert "error:" in result.output and "broken.mp4" in result.output
    assert "Traceback" not in result.output
    bad_out = runner.invoke(app, ["video", str(source), str(style), "-o", str(tmp_path / "o.gif")])
    assert bad_out.exit_code == 1 and "unsupported video format" in bad_out.output


def test_folder_of_frames_in_and_out_and_its_scores(tmp_path: Path, style: Path) -> None:
    source = moving_frames(tmp_path / "in", count=3)
    output = tmp_path / "stylized"
    args = ["--size", "64", "--steps", "3", "--frame-steps", "2", "--device", "cpu"]
    result = runner.invoke(app, ["video", str(source), str(style), "-o", str(output), *args])
    assert result.exit_code == 0, result.output
    assert [p.name for p in numbered_frames(output)] == [frame_name(i) for i in range(3)]
    assert Image.open(output / frame_name(0)).size == (64, 48)
    baseline = tmp_path / "independent"
    result = runner.invoke(
        app, ["video", str(source), str(style), "-o", str(baseline), *args, "--independent"]
    )
    assert result.exit_code == 0, result.output
    record = json.loads(baseline.with_suffix(".json").read_text())
    assert record["video"]["method"] == "independent" and record["video"]["flow"] is None
    assert [f["steps"] for f in record["frames"]] == [3, 3, 3]
    scored = runner.invoke(app, ["score-video", str(output), str(source), "--json"])
    assert scored.exit_code == 0, scored.output
    scores = json.loads(scored.output)
    assert scores["frames"] == 3 and len(scores["per_frame_warping"]) == 2
    assert 0 <= scores["warping_error"] < 1 and scores["style"] > 0 and scores["content"] > 0
    # A still clip stylized as one frame repeated has no warping error.
    still, repeated = tmp_path / "still", tmp_path / "repeated"
    still.mkdir()
    repeated.mkdir()
    for i in range(2):
        Image.open(source / "shot001.png").save(still / f"{i}.png")
        Image.open(output / frame_name(0)).save(repeated / f"{i}.png")
    scored = runner.invoke(app, ["score-video", str(repeated), str(still), str(style), "--json"])
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.output)["warping_error"] < 1e-6


def test_the_temporal_term_pulls_the_trusted_pixels_only(weights) -> None:  # type: ignore[no-untyped-def]
    from nst_batch.engine.temporal import Temporal
    from nst_batch.transfer import stylize_tensors
    from tests.conftest import make_model

    config = build_config(size=48, steps=4, device="cpu")
    model = make_model(weights, config.loss.layers)
    content = to_tensor(content_picture(48, 32))  # (1, 3, 32, 48)
    style = to_tensor(swirl_painting(48, seed=1, strokes=200))
    target = torch.full_like(content, 0.5)  # a grey "previous frame"
    mask = torch.zeros(1, 1, 32, 48)
    mask[..., :24] = 1  # the left half is trusted
    pulled = stylize_tensors(content, [style], config, model, temporal=Temporal(target, mask, 1e4))
    free = stylize_tensors(content, [style], config, model)
    left = (pulled.image - target)[..., :24].abs().mean()
    assert left < 0.5 * (free.image - target)[..., :24].abs().mean()
    # The untrusted right half is not pulled: it stays as far from the target as without it.
    right = (pulled.image - target)[..., 24:].abs().mean()
    assert right > 2 * left
    # The start: the temporal init when one is given.
    started = stylize_tensors(
        content, [style], build_config(size=48, steps=1, device="cpu"), model,
        temporal=Temporal(target, mask, 0.0, init=target),
    )  # fmt: skip
    assert (started.image - target).abs().max() < 0.2


def test_start_duration_and_fps_pick_frames_by_time(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (1, 2, 10, 11, 3):  # numbered, not zero-padded: ordered by number, not by name
        Image.new("RGB", (40, 30), (i * 20, 0, 0)).save(folder / f"f{i}.png")
    (folder / "notes.txt").write_text("not a frame")
    order = [p.name for p in numbered_frames(folder)]
    assert order == ["f1.png", "f2.png", "f3.png", "f10.png", "f11.png"]
    # A folder at 10 fps: 0.1 s to 0.35 s holds the 2nd to 4th frames (t = 0.1, 0.2, 0.3).
    clip = read_clip(folder, ClipRange(start=0.1, duration=0.25, fps=10), 20)
    assert [f.getpixel((0, 0))[0] for f in clip.frames] == [40, 60, 200]
    assert clip.frames[0].size == (20, 15) and clip.fps == 10
    with pytest.raises(VideoError, match="no frames"):
        read_clip(folder, ClipRange(start=9), None)
