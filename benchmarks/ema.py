"""Is averaging the iterates (EMA) worth it? Loss and pixel noise of the returned image.

    python -m benchmarks.ema [--size 256] [--steps 200] [--decay 0.9] [--out FILE.md]

The average does not change the optimizer's path, so one run per optimizer gives both answers:
the best iterate (what nst-batch returns by default) and the EMA image. Reported per image: the
objective, and its high-frequency noise as the mean squared difference between neighbouring
pixels (the L2 TV of the [0, 1] image, unweighted).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.cpu import inputs
from benchmarks.report import Report
from nst_batch.engine.losses import LossConfig, compute_targets, objective
from nst_batch.engine.model import ModelConfig, load_model
from nst_batch.engine.optimize import Progress
from nst_batch.engine.tv import tv_loss
from nst_batch.params import build_config
from nst_batch.transfer import stylize_tensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--decay", type=float, default=0.9)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    content, style, label = inputs(args.size)
    model, _ = load_model(ModelConfig(device="cpu"), LossConfig().layers, torch.device("cpu"))
    report = Report(
        f"# Iterate averaging (EMA, decay {args.decay}) at {args.size} px, {args.steps} steps",
        "",
        f"Inputs: {label}. Lower is better in every column.",
        "",
        "| optimizer | returned image | objective | pixel noise (mean dx²+dy²) |",
        "|---|---|---|---|",
    )
    for optimizer in ("lbfgs", "adam"):
        config = build_config(
            size=args.size, steps=args.steps, scales=1, optimizer=optimizer, ema=args.decay
        )
        best: dict[str, object] = {"loss": float("inf")}

        def keep_best(p: Progress, best: dict[str, object] = best) -> None:
            if p.loss < best["loss"] and p.image is not None:  # type: ignore[operator]
                best.update(loss=p.loss, image=p.image.clone())

        result = stylize_tensors(content, [style], config, model, keep_best)
        with torch.no_grad():
            targets = compute_targets(model(content), model(style), config.loss)
        for name, image in (("best iterate", best["image"]), ("EMA", result.image)):
            assert isinstance(image, torch.Tensor)
            with torch.no_grad():
                loss = objective(image, model(image), targets, config.loss).total.item()
            noise = tv_loss(image).item()
            row = f"| {optimizer} | {name} | {loss:.4f} | {noise:.5f} |"
            report.add(row)
    report.save(args.out)


if __name__ == "__main__":
    main()
