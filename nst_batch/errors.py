"""Errors a user can cause and fix. The CLI turns each into a one-line message and exit status 1."""

from __future__ import annotations


class NstError(Exception):
    """Base of every error nst-batch raises for bad input, missing files or bad settings."""


class ImageError(NstError):
    """An input image is missing, unreadable, not an image, truncated or too large."""


class WeightsError(NstError):
    """A weights file is missing, corrupt, unreachable or of the wrong layout."""


class ConfigError(NstError):
    """A setting is out of range or inconsistent with another."""


class ManifestError(NstError):
    """A manifest has problems; ``problems`` holds every one as (line or None, message)."""

    def __init__(self, source: str, problems: list[tuple[int | None, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"  line {n}: {m}" if n is not None else f"  {m}" for n, m in problems]
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__("\n".join([f"{source}: {count}, nothing was run", *lines]))


class OnnxError(NstError):
    """An ONNX model file is missing, corrupt, or not an nst-batch export for these weights."""


class ParityError(OnnxError):
    """ONNX Runtime and the torch engine disagree beyond tolerance on the same input."""


class VideoError(NstError):
    """A video or a folder of frames is missing, unreadable or cannot be written."""
