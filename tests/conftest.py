"""Shared fixtures. Images are generated here; weights are the real bundled VGG19."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nst_batch.demo import swirl_painting
from nst_batch.engine.vgg import VGG19Features, load_state
from nst_batch.engine.weights import BUNDLED, Weights, load_weights


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Decoded-weights cache in a temp folder, so tests never touch the user's ~/.cache.
    os.environ["NST_BATCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Weights:
    return load_weights(BUNDLED, cache_dir=tmp_path_factory.mktemp("weights-cache"))


def make_model(
    weights: Weights, layers: tuple[str, ...], pooling: str = "max", channels_last: bool = True
) -> VGG19Features:
    """The feature stack as production builds it (``ModelConfig``'s default layout: NHWC)."""
    model = VGG19Features(layers, weights.source.normalization, pooling, channels_last)  # type: ignore[arg-type]
    load_state(model, weights.state)
    return model.requires_grad_(False).eval()


def content_picture(width: int, height: int) -> Image.Image:
    """A small generated 'photo': sky gradient, a sun, a house, grass. Deterministic."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    img[..., 0] = 0.35 + 0.3 * y / height
    img[..., 1] = 0.55 + 0.2 * y / height
    img[..., 2] = 0.95 - 0.2 * y / height
    sun = (x - 0.75 * width) ** 2 + (y - 0.25 * height) ** 2 < (0.12 * min(width, height)) ** 2
    img[sun] = (1.0, 0.85, 0.3)
    img[y > 0.7 * height] = (0.2, 0.55, 0.2)
    house = (abs(x - 0.35 * width) < 0.15 * width) & (y > 0.45 * height) & (y < 0.75 * height)
    img[house] = (0.7, 0.25, 0.2)
    door = (abs(x - 0.35 * width) < 0.04 * width) & (y > 0.6 * height) & (y < 0.75 * height)
    img[door] = (0.25, 0.15, 0.1)
    return Image.fromarray((img * 255).round().astype(np.uint8), "RGB")


@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """A content and a style file on disk (PNG, JPEG)."""
    content, style = tmp_path / "content.png", tmp_path / "style.jpg"
    content_picture(96, 64).save(content)
    swirl_painting(96, seed=1, strokes=400).save(style, quality=92)
    return content, style


def tiny_clip(path: Path, frames: int = 3, fps: int = 6) -> Path:
    """A tiny H.264 clip (64x48, the test picture panning 4 px a frame), made with PyAV."""
    from fractions import Fraction

    av = pytest.importorskip("av")
    pytest.importorskip("cv2")  # what stylizing it needs (optical flow)
    wide = np.asarray(content_picture(64 + 4 * frames, 48))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            pixels = np.ascontiguousarray(wide[:, 4 * i : 4 * i + 64])
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
