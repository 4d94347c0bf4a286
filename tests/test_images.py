"""Image loading and saving: modes, EXIF, every kind of bad file, atomic writes."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nst_batch.errors import ImageError
from nst_batch.images import load_image, open_rgb, resize_long_edge, save_image


def _save(img: Image.Image, path: Path) -> Path:
    img.save(path)
    return path


@pytest.mark.parametrize(
    ("mode", "suffix", "colour", "expected"),
    [
        ("L", ".png", 100, (100, 100, 100)),
        ("LA", ".png", (100, 255), (100, 100, 100)),
        ("LA", ".png", (0, 0), (255, 255, 255)),  # fully transparent -> white
        ("RGBA", ".png", (10, 20, 30, 255), (10, 20, 30)),
        ("RGBA", ".png", (0, 0, 0, 0), (255, 255, 255)),
        ("CMYK", ".jpg", (0, 255, 255, 0), None),  # red in CMYK
        ("I;16", ".png", 65535, (255, 255, 255)),
        ("I;16", ".png", 32768, (128, 128, 128)),
    ],
)
def test_modes_become_rgb(
    tmp_path: Path, mode: str, suffix: str, colour: object, expected: tuple[int, int, int] | None
) -> None:
    path = _save(Image.new(mode, (6, 4), colour), tmp_path / f"img{suffix}")
    img = open_rgb(path)
    assert img.mode == "RGB" and img.size == (6, 4)
    r, g, b = img.getpixel((2, 2))
    if expected is None:  # CMYK red through JPEG: red dominates
        assert r > 200 and g < 60 and b < 60
    else:
        assert (r, g, b) == expected


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    assert open_rgb(_save(p, tmp_path / "p.png")).getpixel((0, 0)) == (200, 10, 10)
    p.info["transparency"] = 1
    assert open_rgb(_save(p, tmp_path / "pt.png")).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 20))  # blue strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif, quality=95)
    upright = open_rgb(path)
    assert upright.size == (20, 40)
    r, _, b = upright.getpixel((10, 3))  # left strip is now on top
    assert b > 200 and r < 60


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size: Pillow's bomb check fires before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Each bad-input case: a path and a fragment of its error message."""
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(good)
    data = good.read_bytes()
    cases = {
        "missing": (tmp_path / "nope.png", "no such file"),
        "directory": (tmp_path, "not a regular file"),
        "empty": (tmp_path / "empty.png", "empty"),
        "truncated": (tmp_path / "truncated.png", "cannot decode"),
        "not an image": (tmp_path / "text.jpg", "not an image"),
        "bomb": (tmp_path / "bomb.png", "decompression bomb"),
    }
    cases["empty"][0].write_bytes(b"")
    cases["truncated"][0].write_bytes(data[: len(data) // 2])
    cases["not an image"][0].write_text("this is not a picture\n")
    pixels = Image.MAX_IMAGE_PIXELS or 89_478_485
    side = int((pixels * 1.5) ** 0.5)  # 1.5x the limit: Pillow alone would only warn
    cases["bomb"][0].write_bytes(_png_claiming(side, side))
    return cases


def test_each_bad_input_is_one_clear_error(tmp_path: Path) -> None:
    for case, (path, fragment) in bad_inputs(tmp_path).items():
        with pytest.raises(ImageError) as info:
            load_image(path)
        message = str(info.value)
        assert fragment in message, case
        assert str(path) in message and "\n" not in message, case


def test_resize_long_edge_keeps_aspect() -> None:
    img = Image.new("RGB", (300, 200))
    assert resize_long_edge(img, 150).size == (150, 100)
    assert resize_long_edge(Image.new("RGB", (200, 300)), 60).size == (40, 60)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".jpeg", ".webp"])
def test_save_by_extension_round_trips(tmp_path: Path, suffix: str) -> None:
    image = torch.rand(1, 3, 16, 24)
    path = tmp_path / f"out{suffix}"
    save_image(image, path)
    back = load_image(path)
    assert back.shape == (1, 3, 16, 24)
    tolerance = 0.5 / 255 if suffix == ".png" else 0.25  # lossy formats: only roughly equal
    assert (back - image).abs().mean() <= tolerance
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left


def test_unsupported_output_format(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"unsupported output format '\.gif'"):
        save_image(torch.rand(1, 3, 4, 4), tmp_path / "x.gif")
