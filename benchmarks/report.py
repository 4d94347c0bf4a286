"""A markdown report that is printed as it grows and optionally saved at the end."""

from __future__ import annotations

from pathlib import Path


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
