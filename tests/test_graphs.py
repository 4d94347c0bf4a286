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

import nst_batch.engine.lbfgs as lbfgs_module
import nst_batch.engine.optimize as optimize_module
from nst_batch.cli import app
from nst_batch.engine.graphs import Replay
from nst_batch.engine.lbfgs import BatchedLBFGS
from nst_batch.engine.optimize import graph_status
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


def _quartic_batch(seed: int = 0) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Two independent 30-dimensional smooth problems: x0 (2, 30) and f(x) -> (2,)."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(2, 30, 30, generator=gen, dtype=torch.float64)
    a = a @ a.transpose(1, 2) / 30 + torch.eye(30, dtype=torch.float64)
    c = torch.randn(2, 30, generator=gen, dtype=torch.float64)

    def f(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * torch.einsum("bi,bij,bj->b", x, a, x) - (c * x).sum(1) + 0.01 * (x**4).sum(1)

    return torch.randn(2, 30, generator=gen, dtype=torch.float64), f


def _run_lbfgs(lbfgs: BatchedLBFGS, x: torch.Tensor, f: Callable, steps: int) -> None:
    grad = torch.zeros_like(x)  # one gradient tensor, refreshed in place, as the loop's x.grad
    for _ in range(steps):
        xg = x.detach().requires_grad_(True)
        loss = f(xg)
        (g,) = torch.autograd.grad(loss.sum(), xg)
        grad.copy_(g)
        lbfgs.step(grad, loss.detach())


def test_a_full_history_lbfgs_step_updates_its_state_in_place() -> None:
    """What a CUDA graph of the step needs: once the history is full, no state tensor is
    replaced by a new one (a graph replays on the tensors it captured)."""
    x0, f = _quartic_batch()
    x = x0.clone()
    lbfgs = BatchedLBFGS(x, 0.5, history_size=4, line_search="backtrack", graphs=True)
    _run_lbfgs(lbfgs, x, f, 5)  # the history is full from here
    tensors = {k: v for k, v in vars(lbfgs).items() if isinstance(v, torch.Tensor)}
    before = {k: (v.data_ptr(), v.clone()) for k, v in tensors.items()}
    _run_lbfgs(lbfgs, x, f, 6)
    for name, (pointer, _) in before.items():
        assert getattr(lbfgs, name) is tensors[name] and tensors[name].data_ptr() == pointer, name
    changed = [k for k, (_, v) in before.items() if not torch.equal(v, tensors[k])]
    assert {"pairs", "newest", "h_diag", "x_prev", "d"} <= set(changed)  # the steps did work
    assert lbfgs.graph_status == "off"  # no CUDA here: the replay ran eagerly


def test_a_failed_lbfgs_step_capture_falls_back_with_the_same_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x0, f = _quartic_batch(1)
    eager_x = x0.clone()
    _run_lbfgs(BatchedLBFGS(eager_x, 0.5, 4, "backtrack"), eager_x, f, 12)
    monkeypatch.setattr(lbfgs_module, "Replay", FailingCapture)
    x = x0.clone()
    lbfgs = BatchedLBFGS(x, 0.5, 4, "backtrack", graphs=True)
    _run_lbfgs(lbfgs, x, f, 12)
    assert torch.equal(x, eager_x)  # warm-ups, the failed capture's rerun and later steps
    assert lbfgs.graph_status == f"fallback: RuntimeError: {CAPTURE_ERROR}"
    evaluation = "on"
    assert graph_status(evaluation, lbfgs.graph_status).startswith("fallback: L-BFGS step: ")
    assert graph_status("on", "off") == "on"
