"""The benchmark scripts still run end to end on this CPU (real weights, toy sizes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.profile_step import profile_section, profile_step
from benchmarks.report import Report
from benchmarks.step import LOSS

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_step_profile_accounts_for_the_step() -> None:
    gen = torch.Generator().manual_seed(0)
    content = torch.rand(1, 3, 48, 64, generator=gen)  # (1, 3, H, W)
    style = torch.rand(1, 3, 64, 64, generator=gen)
    found = profile_step(content, style, LOSS, "bf16", active=2, top=5)
    assert found.size == (64, 48) and found.steps == 2
    assert 0 < found.conv_s < found.step_s  # convolutions are part of the step, not all of it
    assert found.conv_gflop > 0 and found.step_gflop > found.conv_gflop  # plus the Grams
    assert found.copies > 0 and found.matmul_gflops > 0
    assert len(found.top) == 5 and found.top[0].self_ms >= found.top[-1].self_ms
    report = Report()
    profile_section(report, found)
    text = "\n".join(report.lines)
    assert "aten::copy_" in text and "% of this CPU's measured bf16 matmul peak" in text


@pytest.mark.slow
def test_gpu_benchmark_smoke_runs_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu.md"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--smoke", "--device", "cpu", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    text = out.read_text()
    for row in ("| 64 | fp32 | off | 1 |", "| 64 | bf16 | off | 2 |"):
        assert row in text
    share = next(line for line in text.splitlines() if line.startswith("| 64 | ") and "%" in line)
    assert float(share.split("|")[4].strip().rstrip("%")) < 100  # L-BFGS share of a step
    assert "## One 96 px job" in text and "out of memory" not in text
    assert "aten::" in text  # the profile
