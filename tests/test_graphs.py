"""CUDA graphs never fail a job: an injected capture error falls back to eager (CPU-testable
by pretending the device is CUDA and replacing the CUDA-only calls)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import nst_batch.engine.optimize as optimize_module
from nst_batch.cli import app
from nst_batch.engine.graphs import Replay
from nst_batch.jobs.run import stylize
from nst_batch.params import build_config

CAPTURE_ERROR = "CUDA error: operation not permitted when stream is capturing"


class FailingCapture(Replay[Any]):
    """A Replay on a 'CUDA' device whose warm-up runs eagerly and whose capture fails."""

    def __init__(self, step: Callable[[], Any], device: torch.device, **kwargs: Any) -> None:
        super().__init__(step, torch.device("cuda"), **kwargs)
        self.warm_calls = 0

    def _warm(self) -> Any:
        self.warm_calls += 1
        return self.step()

    def _capture(self) -> Any:
        raise RuntimeError(CAPTURE_ERROR)


def test_a_failed_capture_runs_the_step_eagerly_from_then_on() -> None:
    counter = torch.zeros(())

    def step() -> torch.Tensor:
        counter.add_(1)
        return counter.clone()

    replay = FailingCapture(step, torch.device("cpu"), warmup=2)
    assert replay.enabled and replay.status == "off"
    values = [float(replay()) for _ in range(5)]
    assert values == [1, 2, 3, 4, 5]  # every call ran the step exactly once
    assert replay.warm_calls == 2 and not replay.enabled and not replay.captured
    assert replay.status == f"fallback: RuntimeError: {CAPTURE_ERROR}"


def test_a_replay_error_also_falls_back() -> None:
    class BrokenGraph:
        def replay(self) -> None:
            raise RuntimeError("CUDA error: an illegal memory access\nmore lines")

    replay = Replay(lambda: 7, torch.device("cuda"))
    replay.graph = BrokenGraph()  # type: ignore[assignment]
    assert replay() == 7
    assert replay.status == "fallback: RuntimeError: CUDA error: an illegal memory access"


def test_job_with_a_failing_capture_completes_like_an_eager_one(
    pair: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = build_config(size=48, steps=6, scales=1, targets_backend="torch", precision="fp32")
    eager = stylize(*pair, tmp_path / "eager.png", config)
    assert eager.sidecar.cuda_graphs == "off"
    monkeypatch.setattr(optimize_module, "Replay", FailingCapture)
    result = stylize(*pair, tmp_path / "out.png", config)
    assert torch.equal(result.image, eager.image)  # the same steps, all eager
    record = json.loads((tmp_path / "out.json").read_text())
    assert record["cuda_graphs"] == f"fallback: RuntimeError: {CAPTURE_ERROR}"
    assert record["steps_completed"] == 6 and record["converged"] is True


def test_the_cli_warns_once_about_the_fallback(
    pair: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(optimize_module, "Replay", FailingCapture)
    args = [*map(str, pair), "-o", str(tmp_path / "o.png"), "--size", "32", "--steps", "5"]
    result = CliRunner().invoke(app, ["stylize", *args, "--targets-backend", "torch"])
    assert result.exit_code == 0, result.output
    assert result.output.count("CUDA graphs fallback: RuntimeError") == 1
