"""fp32 against bf16 at equal steps: seconds per step, final objective and quality distances.

    python -m benchmarks.precision [--size 256] [--steps 150] [--scales 1]
        [--pairs tubingen:starry_night,golden_gate:the_scream] [--device cpu] [--out FILE.md]

Both precisions run the real loop (default objective, L-BFGS) from the same inputs for the same
number of steps, alternating per pair. The final image of each is re-evaluated with the float32
objective, so both are judged by the same yardstick, and scored with ``nst_batch.metrics`` (style
and content distances). This is how ``--precision auto`` was chosen (README, "GPU engine").
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from benchmarks.report import SHARED, Report, cpu_name
from nst_batch.engine.graphs import native_bf16
from nst_batch.engine.losses import compute_targets, objective
from nst_batch.engine.model import load_model
from nst_batch.images import open_rgb, resize_long_edge, to_tensor
from nst_batch.metrics import score
from nst_batch.params import build_config
from nst_batch.transfer import stylize_tensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--scales", type=int, default=1)
    parser.add_argument("--pairs", default="tubingen:starry_night,golden_gate:the_scream")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    report = Report(
        f"# fp32 against bf16 ({device.type})",
        "",
        f"- {name}, {torch.get_num_threads()} threads, torch {torch.__version__}, python "
        f"{platform.python_version()}; native bf16: {native_bf16(device)}",
        f"- default objective, L-BFGS, {args.size} px, {args.steps} steps, scales {args.scales}; "
        "objective = the final image under the float32 objective; distances from "
        "nst_batch.metrics (0 = perfect)",
        "",
        "| pair | precision | s / step | objective (fp32) | style distance | content distance |",
        "|---|---|---|---|---|---|",
    )
    for pair in args.pairs.split(","):
        content_name, style_name = pair.split(":")
        content = to_tensor(resize_long_edge(open_rgb(SHARED / f"{content_name}.jpg"), args.size))
        style = to_tensor(resize_long_edge(open_rgb(SHARED / f"{style_name}.jpg"), args.size))
        for precision in ("fp32", "bf16"):
            config = build_config(
                size=args.size,
                steps=args.steps,
                scales=args.scales,
                precision=precision,
                device=str(device),
                targets_backend="torch",
            )
            model, _ = load_model(config.model, config.loss.layers, device)
            start = time.perf_counter()
            result = stylize_tensors(content, style, config, model)
            seconds = (time.perf_counter() - start) / result.steps
            with torch.no_grad():
                c, s, image = content.to(device), style.to(device), result.image.to(device)
                targets = compute_targets(model(c), model(s), config.loss)
                loss = objective(image, model(image), targets, config.loss).total.item()
            scores = score(result.image, content, [style])
            report.add(
                f"| {content_name} + {style_name} | {precision} | {seconds:.3f} | {loss:.4f} "
                f"| {scores.style:.4f} | {scores.content:.4f} |"
            )
    report.save(args.out)


if __name__ == "__main__":
    main()
