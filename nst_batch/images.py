"""Reading and writing images: every failure a user can cause becomes a one-line ImageError."""

from __future__ import annotations

import io
import os
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from nst_batch.errors import ImageError

# Output formats by extension, with the options that make them good for art rather than small.
SAVE_FORMATS: dict[str, tuple[str, dict[str, object]]] = {
    ".png": ("PNG", {}),
    ".jpg": ("JPEG", {"quality": 95, "subsampling": 0}),
    ".jpeg": ("JPEG", {"quality": 95, "subsampling": 0}),
    ".webp": ("WEBP", {"quality": 95}),
}


def check_output_path(path: Path, image: bool = True) -> None:
    """Fail before any work when an output could not be written as asked: an unknown image
    format (unless ``image`` is False), a folder in the way, or a folder that exists but cannot
    be written to. Missing folders are fine (:func:`make_output_folder` creates them); a file
    where a folder should be is not."""
    if image and path.suffix.lower() not in SAVE_FORMATS:
        raise ImageError(
            f"{path}: unsupported output format {path.suffix or '(none)'!r}; "
            f"use one of {', '.join(sorted(SAVE_FORMATS))}"
        )
    if path.is_dir():
        raise ImageError(f"{path}: is a directory")
    for parent in Path(os.path.abspath(path)).parents:  # the nearest folder that exists
        if parent.exists():
            if not parent.is_dir():
                raise ImageError(f"{path}: {parent} is not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ImageError(f"{path}: folder {parent} is not writable")
            return


def make_output_folder(path: Path) -> None:
    """Create the folders an output goes into (as ``mkdir -p``)."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ImageError(f"{path}: cannot create its folder ({err.strerror or err})") from None


def file_identity(path: Path) -> tuple[object, ...]:
    """What makes two paths the same file: (device, inode) for an existing file, so different
    spellings, symlinks and hard links agree; the resolved path for a file not yet there."""
    try:
        st = os.stat(path)
    except OSError:
        return ("path", os.path.realpath(path))
    return ("inode", st.st_dev, st.st_ino)


def check_not_inputs(outputs: Sequence[Path], inputs: Sequence[Path]) -> None:
    """Refuse to write an output (or a sidecar) over one of the job's input files."""
    found = {file_identity(p): p for p in inputs}
    for output in outputs:
        if (same := found.get(file_identity(output))) is not None:
            raise ImageError(f"{output}: would overwrite the input {same}; choose another output")


_PIXEL_LIMIT_LOCK = threading.Lock()  # Pillow's limit is a module global


@contextmanager
def _pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """Pillow's decompression-bomb limit set to ``max_pixels`` while decoding (None: as is)."""
    if max_pixels is None:
        yield
        return
    with _PIXEL_LIMIT_LOCK:
        before = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = before


def open_rgb(path: Path, max_pixels: int | None = None) -> Image.Image:
    """Decode an image file fully into an 8-bit RGB PIL image, upright per its EXIF orientation.

    Transparent images are composited over white; L, LA, P, CMYK and 16-bit greyscale become RGB.
    Images over ``max_pixels`` (default: Pillow's decompression-bomb limit,
    ``Image.MAX_IMAGE_PIXELS``, 89.5 megapixels) are refused with an error, not the warning Pillow
    gives between 1x and 2x the limit.
    """
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if not path.is_file():
        raise ImageError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: file is empty (0 bytes)")
    try:
        with warnings.catch_warnings(), _pixel_limit(max_pixels):
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()  # decode now: a truncated file fails here, not later
                img = ImageOps.exif_transpose(img)
                return _to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(
            f"{path}: too many pixels, refusing a possible decompression bomb ({err}); "
            "if you trust the file, raise the limit with --max-pixels (max_pixels)"
        ) from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as err:
        # Pillow reports truncated or corrupt data as OSError ("image file is truncated") and
        # some malformed headers as SyntaxError/ValueError.
        raise ImageError(f"{path}: cannot decode image ({err})") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit greyscale: Pillow's own convert clips at 255; scale the full range instead.
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(arr / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "F":
        arr = np.clip(np.asarray(img, dtype=np.float64) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def resized_shape(size: tuple[int, int], long_edge: int) -> tuple[int, int]:
    """(W, H) after resizing ``size`` (W, H) so its longer side is ``long_edge``."""
    w, h = size
    scale = long_edge / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def oriented_size(path: Path) -> tuple[int, int]:
    """(W, H) of an image file as :func:`open_rgb` will return it (EXIF rotation applied),
    read from the header only."""
    with Image.open(path) as img:
        w, h = img.size
        rotated = img.getexif().get(0x0112) in (5, 6, 7, 8)  # orientations that swap W and H
    return (h, w) if rotated else (w, h)


def resize_long_edge(img: Image.Image, long_edge: int) -> Image.Image:
    """Resize so the longer side is ``long_edge`` pixels, keeping the aspect ratio."""
    size = resized_shape(img.size, long_edge)
    if size == img.size:
        return img
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def to_tensor(img: Image.Image) -> Tensor:
    """RGB PIL image -> (1, 3, H, W) float32 in [0, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_pil(image: Tensor) -> Image.Image:
    """(1, 3, H, W) or (3, H, W) in [0, 1] -> RGB PIL image (rounded, not truncated)."""
    if image.dim() == 4:
        image = image[0]
    # in place after the clamp's copy: at print size each float32 temporary is 0.17 GB
    arr = image.detach().float().clamp(0, 1).mul_(255).round_().to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).cpu().numpy(), mode="RGB")


def load_image(path: Path, long_edge: int | None = None, max_pixels: int | None = None) -> Tensor:
    """Read an image file as (1, 3, H, W) float32 RGB in [0, 1], optionally resized."""
    img = open_rgb(Path(path), max_pixels)
    if long_edge is not None:
        img = resize_long_edge(img, long_edge)
    return to_tensor(img)


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0666 without the process's umask bits."""
    try:  # Linux 4.7+: read it without changing it (os.umask is process-wide, threads race)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def open_atomic(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through: a temp file beside it, fsynced and renamed into
    place on success (a reader sees the old file or the whole new one), removed on failure. The
    file gets the mode a plain ``open()`` would give (0666 & ~umask), not mkstemp's 0600."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), new_file_mode())
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes so a reader sees either the old file or the whole new one, never a part."""
    with open_atomic(path) as f:
        f.write(data)


def save_pil(img: Image.Image, path: Path) -> None:
    """Save a PIL image atomically, format chosen by the extension."""
    path = Path(path)
    check_output_path(path)
    make_output_folder(path)
    fmt, options = SAVE_FORMATS[path.suffix.lower()]
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    write_atomic(path, buf.getvalue())


def save_image(image: Tensor, path: Path) -> None:
    """Save (1, 3, H, W) in [0, 1] atomically, format chosen by the extension."""
    save_pil(to_pil(image), path)
