"""A markdown report that is printed as it grows and optionally saved at the end."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "images"


class Report:
    """Lines of a markdown table report; each line is printed at once so long runs show progress."""

    def __init__(self, *header: str) -> None:
        self.lines: list[str] = []
        self.add(*header)

    def add(self, *lines: str) -> None:
        for line in lines:
            print(line, flush=True)
            self.lines.append(line)

    def save(self, path: Path | None) -> None:
        if path is not None:
            path.write_text("\n".join(self.lines) + "\n")


def cpu_name() -> str:
    """The CPU model as the kernel reports it (Linux), else the platform's guess."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def benchmark_pictures() -> tuple[Image.Image, Image.Image, str]:
    """Content and style for speed benchmarks: tubingen + starry_night from ../shared/images
    when present, else the built-in demo pictures; and a label saying which."""
    from nst_batch.demo import content_photo, swirl_painting
    from nst_batch.images import open_rgb

    if (SHARED / "tubingen.jpg").is_file():
        content, style = open_rgb(SHARED / "tubingen.jpg"), open_rgb(SHARED / "starry_night.jpg")
        return content, style, "tubingen + starry_night"
    return content_photo(), swirl_painting(), "built-in demo inputs"
