"""Seconds per L-BFGS iteration of the default objective, and weight start-up times.

    python benchmarks/cpu.py [--sizes 256,512] [--iters 12] [--device cpu] [--out FILE.md]

Runs the real optimization loop (default LossConfig, bundled weights) on the photos in
../shared/images when present, else on the built-in demo inputs, and prints a markdown table.
Each size is measured in contiguous (NCHW) and channels_last memory layout.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.report import Report, benchmark_pictures
from nst_batch.config import StylizeConfig
from nst_batch.engine.losses import LossConfig
from nst_batch.engine.model import ModelConfig, load_model
from nst_batch.engine.optimize import OptimConfig
from nst_batch.engine.weights import BUNDLED, load_weights
from nst_batch.images import resize_long_edge, to_tensor
from nst_batch.transfer import stylize_tensors


def inputs(size: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    content, style, label = benchmark_pictures()
    return (
        to_tensor(resize_long_edge(content, size)),
        to_tensor(resize_long_edge(style, size)),
        label,
    )


def startup_times() -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        load_weights(BUNDLED, cache_dir=Path(cache))  # decode + write cache
        t1 = time.perf_counter()
        load_weights(BUNDLED, cache_dir=Path(cache))  # from cache
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def seconds_per_iteration(
    size: int, iters: int, device: torch.device, channels_last: bool
) -> tuple[float, str]:
    content, style, label = inputs(size)
    config = StylizeConfig(size=size, optim=OptimConfig(steps=iters + 2))
    model_config = ModelConfig(device=str(device), channels_last=channels_last)
    model, _ = load_model(model_config, LossConfig().layers, device)
    result = stylize_tensors(content, style, config, model)
    stamps = [0.0] + [p.elapsed for p in result.history]
    per_step = [b - a for a, b in itertools.pairwise(stamps)][2:]  # skip warm-up
    return statistics.median(per_step), f"{content.shape[-1]}x{content.shape[-2]} ({label})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--iters", type=int, default=12)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = parser.parse_args()
    device = torch.device(args.device)

    decode, cached = startup_times()
    report = Report(
        f"# nst-batch per-iteration time ({device.type})",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        f"- weights start-up: decode {decode:.2f} s, from cache {cached:.2f} s",
        f"- L-BFGS, default objective (content relu4_2, style relu1_1..relu5_1, TV), "
        f"median of {args.iters} iterations after 2 warm-up",
        "",
        "| size (W x H) | layout | s / iteration | iterations / s |",
        "|---|---|---|---|",
    )
    for size in (int(s) for s in args.sizes.split(",")):
        for channels_last in (False, True):
            sec, shape = seconds_per_iteration(size, args.iters, device, channels_last)
            layout = "channels_last" if channels_last else "contiguous"
            row = f"| {shape} | {layout} | {sec:.3f} | {1 / sec:.2f} |"
            report.add(row)
    report.save(args.out)


if __name__ == "__main__":
    main()
