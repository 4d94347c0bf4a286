"""Coarse-to-fine vs single-scale: wall time to reach the same final loss.

    python benchmarks/multiscale.py [--size 512] [--steps 200] [--out FILE.md]

Single-scale runs ``--steps`` L-BFGS iterations at ``--size``; the pyramid run does the default
coarse scales (half as many iterations each) and then ``--steps`` at ``--size``. The target is the
single-scale run's final loss; the table gives when each run first reaches it (losses are only
comparable at the final scale, so the pyramid is judged on its final-scale steps), and the loss
each reaches at a few equal wall-clock budgets. Uses ../shared/images when present.
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import torch

from benchmarks.cpu import inputs
from benchmarks.report import Report
from nst_batch.engine.losses import LossConfig
from nst_batch.engine.model import ModelConfig, load_model
from nst_batch.engine.optimize import Progress
from nst_batch.params import build_config
from nst_batch.transfer import stylize_tensors


def run(
    size: int, steps: int, scales: int | None, scale_steps: int | None = None
) -> tuple[list[Progress], tuple[int, ...]]:
    content, style, _ = inputs(size)
    config = build_config(size=size, steps=steps, scales=scales, scale_steps=scale_steps)
    model, _ = load_model(ModelConfig(device="cpu"), LossConfig().layers, torch.device("cpu"))
    result = stylize_tensors(content, [style], config, model)
    final = len(config.pyramid()) - 1
    return [p for p in result.history if p.scale == final], config.pyramid()


def first_reaching(history: list[Progress], target: float) -> Progress | None:
    best = float("inf")
    for p in history:
        best = min(best, p.loss)
        if best <= target:
            return p
    return None


def best_by(history: list[Progress], seconds: float) -> float | None:
    losses = [p.loss for p in history if p.elapsed <= seconds]
    return min(losses) if losses else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--scales", type=int, help="pyramid levels [auto]")
    parser.add_argument("--scale-steps", type=int, help="iterations per coarse level [steps/2]")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    single, _ = run(args.size, args.steps, scales=1)
    multi, pyramid = run(args.size, args.steps, args.scales, args.scale_steps)
    target = min(p.loss for p in single)
    s_hit, m_hit = first_reaching(single, target), first_reaching(multi, target)
    assert s_hit is not None

    def hit(p: Progress | None) -> str:
        return f"{p.elapsed:.0f} s (step {p.step} overall)" if p else "not reached"

    report = Report(
        f"# Coarse to fine vs single scale at {args.size} px (CPU)",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        f"- default objective, L-BFGS; pyramid {' -> '.join(map(str, pyramid))} px, "
        f"{args.scale_steps or args.steps // 2} steps per coarse level",
        f"- target: the single-scale run's best loss after {args.steps} steps, {target:.4f}",
        "",
        "| run | reaches target after | best loss at end | total wall time |",
        "|---|---|---|---|",
        f"| single scale | {hit(s_hit)} | {target:.4f} | {single[-1].elapsed:.0f} s |",
        f"| coarse to fine | {hit(m_hit)} | {min(p.loss for p in multi):.4f} "
        f"| {multi[-1].elapsed:.0f} s |",
        "",
    )
    if m_hit:
        saved = 1 - m_hit.elapsed / s_hit.elapsed
        report.add(f"Coarse to fine reaches the same loss in {saved:.0%} less wall time.", "")
    report.add(
        "| wall-clock budget | single-scale best loss | coarse-to-fine best loss |", "|---|---|---|"
    )
    end = single[-1].elapsed
    for frac in (0.25, 0.5, 0.75, 1.0):
        budget = frac * end
        s, m = best_by(single, budget), best_by(multi, budget)

        def cell(x: float | None) -> str:
            return "-" if x is None else f"{x:.4f}"

        report.add(f"| {budget:.0f} s | {cell(s)} | {cell(m)} |")
    report.save(args.out)


if __name__ == "__main__":
    main()
