"""The memory estimate against measured peaks, and the plans that fit a budget."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from benchmarks.memory import measure
from nst_batch.engine.memory import GB, TILE_SIZES, MemoryConfig, estimate_bytes, plan
from nst_batch.errors import ConfigError

LAYERS = ("relu4_2", "relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
PHONE = (1, 3024, 4032)  # a 12-megapixel photo


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for peak RSS")
@pytest.mark.parametrize(("size", "tile"), [(256, 0), (512, 0), (1024, 0), (512, 256)])
def test_estimate_within_25_percent_of_measured_peak(size: int, tile: int) -> None:
    """A real job (2 steps, bf16, the default preset) in a fresh process: the peak resident set
    it adds to the process is what the engine's estimate says, within 25%."""
    r = measure(size, tile, steps=2, precision="bf16")
    assert (r["tile"] or 0) == tile
    ratio = float(r["estimate"]) / float(r["job"])  # type: ignore[arg-type]
    assert 0.75 < ratio < 1.25, f"estimate {r['estimate']:.3g} B, measured {r['job']:.3g} B"


def test_plan_untiled_when_it_fits() -> None:
    p = plan(MemoryConfig(), LAYERS, (1, 384, 512), "bf16", "lbfgs", 100, 8 * GB)
    assert p.tile is None and p.history_size == 100 and p.estimate_gb < 8


def test_plan_tiles_then_shortens_the_history_then_adam() -> None:
    untiled = estimate_bytes(LAYERS, 3024, 4032, 1, "bf16", "lbfgs", 100)
    assert untiled > 30 * GB  # why a phone photo does not fit a 24 GB machine untiled
    roomy = plan(MemoryConfig(), LAYERS, PHONE, "bf16", "lbfgs", 100, 40 * GB)
    assert roomy.tile is not None and roomy.history_size == 100
    tight = plan(MemoryConfig(), LAYERS, PHONE, "bf16", "lbfgs", 100, 5.6 * GB)
    assert tight.tile is not None and 5 <= tight.history_size < 100 and tight.estimate_gb <= 5.6
    tighter = plan(MemoryConfig(), LAYERS, PHONE, "bf16", "lbfgs", 100, 3 * GB)
    assert tighter.optimizer == "adam" and tighter.history_size == 0
    with pytest.raises(ConfigError, match=r"needs at least .* GB"):
        plan(MemoryConfig(), LAYERS, PHONE, "bf16", "lbfgs", 100, 1 * GB)


@pytest.mark.parametrize("budget_gb", [3.0, 3.5, 4.3])  # under 5 L-BFGS pairs' 4.6 GB
def test_plan_gives_adam_the_largest_tile_that_fits(budget_gb: float) -> None:
    """When no L-BFGS history fits, Adam gets the largest tile its smaller state leaves room
    for (fewer halos to recompute), not the smallest."""
    budget = budget_gb * GB
    p = plan(MemoryConfig(), LAYERS, PHONE, "bf16", "lbfgs", 100, budget)
    assert p.optimizer == "adam" and p.tile is not None and p.tile > min(TILE_SIZES)
    larger = [t for t in TILE_SIZES if t > p.tile]
    assert p.estimate_gb <= budget_gb
    assert all(estimate_bytes(LAYERS, 3024, 4032, 1, "bf16", "adam", 0, t) > budget for t in larger)


def test_plan_uses_the_tile_asked_for() -> None:
    p = plan(MemoryConfig(tile=320), LAYERS, (1, 384, 512), "fp32", "lbfgs", 100, 8 * GB)
    assert p.tile == 320


def test_estimate_grows_with_size_batch_history_and_precision() -> None:
    small = estimate_bytes(LAYERS, 256, 256)
    assert estimate_bytes(LAYERS, 512, 512) > 3 * small
    assert estimate_bytes(LAYERS, 256, 256, batch=2) > small
    assert estimate_bytes(LAYERS, 256, 256, history_size=10) < small
    assert estimate_bytes(LAYERS, 256, 256, precision="bf16") < small
    assert estimate_bytes(("relu1_1",), 256, 256) < small
    tiled = estimate_bytes(LAYERS, 2048, 2048, tile=256)
    assert tiled < estimate_bytes(LAYERS, 2048, 2048) / 2


def test_stylize_cli_tiles_within_a_budget(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    """--tile through the CLI: the sidecar records the plan."""
    from typer.testing import CliRunner

    from nst_batch.cli import app

    content, style = pair
    out = tmp_path / "out.png"
    args = ["stylize", str(content), str(style), "-o", str(out), "--size", "96", "--steps", "3"]
    result = CliRunner().invoke(app, [*args, "--tile", "64", "--max-memory", "20"])
    assert result.exit_code == 0, result.output
    memory = json.loads(out.with_suffix(".json").read_text())["memory"]
    assert memory["tile"] == 64 and memory["optimizer"] == "lbfgs"
    assert "memory: tiles of 64 px" in result.output


def test_stylize_cli_refuses_a_budget_too_small(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    from typer.testing import CliRunner

    from nst_batch.cli import app

    content, style = pair
    out = tmp_path / "out.png"
    args = ["stylize", str(content), str(style), "-o", str(out), "--size", "96", "--steps", "2"]
    result = CliRunner().invoke(app, [*args, "--max-memory", "0.01"])
    assert result.exit_code == 1
    assert "raise --max-memory" in result.output and not out.exists()
