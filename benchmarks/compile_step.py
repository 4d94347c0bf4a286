"""Does ``torch.compile`` of the loss function pay on this CPU? Eager against compiled, interleaved.

    python -m benchmarks.compile_step [--size 384] [--precisions bf16,fp32] [--steps 10]
        [--repeats 2] [--out benchmarks/results/compile-cpu.md]

The real loop (``stylize_tensors``: default preset, one scale, Adam, so one forward and backward
per step, ``targets_backend=torch``) on tubingen + starry_night (or the built-in pictures), run
eagerly and with the loss function handed to ``torch.compile`` (inductor, default mode) before
the loop takes its gradient; the two alternate, order flipping each repeat, in this process.
Reported per precision: the median step after the first three (the first compiles; inductor's
on-disk cache makes later compiles of the same graph shorter), the first step's seconds, the
final loss of each, and how many steps of one image shape pay back a cold compile.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

import nst_batch.engine.optimize as optimize_module
from benchmarks.report import Report, benchmark_pictures, cpu_name
from nst_batch.engine.model import load_model
from nst_batch.images import resize_long_edge, to_tensor
from nst_batch.params import build_config
from nst_batch.transfer import stylize_tensors

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "compile-cpu.md"
SKIP = 3  # steps left out of the median: the compile, and the allocator settling


def run(
    content: torch.Tensor, style: torch.Tensor, precision: str, steps: int, compiled: bool
) -> tuple[list[float], float]:
    """One Adam run; returns the seconds of each step and the final loss."""
    eager = optimize_module.autograd_gradient
    if compiled:  # the loop differentiates whatever autograd_gradient is handed

        def patched(loss_fn: Any) -> Any:
            return eager(torch.compile(loss_fn))

        optimize_module.autograd_gradient = patched  # type: ignore[assignment]
    config = build_config(
        size=max(content.shape[-2:]), steps=steps, scales=1, device="cpu",
        precision=precision, optimizer="adam", targets_backend="torch",
    )  # fmt: skip
    model = load_model(config.model, config.loss.layers, torch.device("cpu"))[0]
    stamps = [0.0]
    try:
        result = stylize_tensors(content, style, config, model, lambda p: stamps.append(p.elapsed))
    finally:
        optimize_module.autograd_gradient = eager  # type: ignore[assignment]
    return [b - a for a, b in itertools.pairwise(stamps)], float(result.loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=384, help="long edge of the content")
    parser.add_argument("--precisions", default="bf16,fp32")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    # A fresh on-disk cache, so the first compile of each precision is a cold one.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
    content_img, style_img, label = benchmark_pictures()
    content = to_tensor(resize_long_edge(content_img, args.size))  # (1, 3, H, W)
    style = to_tensor(resize_long_edge(style_img, 512))
    h, w = content.shape[-2:]
    report = Report(
        "# torch.compile of the loss function against eager (CPU)",
        "",
        f"- {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"python {platform.python_version()}; {label} at {w}x{h}, default preset, Adam, "
        f"{args.steps} steps per run, {args.repeats} repeats, eager and compiled alternating",
        "",
        "| precision | mode | s / step (median) | first step s | final loss | compiled / eager |",
        "|---|---|---|---|---|---|",
    )
    for precision in [p for p in args.precisions.split(",") if p]:
        steps: dict[bool, list[float]] = {False: [], True: []}
        first: dict[bool, list[float]] = {False: [], True: []}
        loss: dict[bool, float] = {}
        for repeat in range(args.repeats):
            for compiled in (False, True) if repeat % 2 == 0 else (True, False):
                seconds, loss[compiled] = run(content, style, precision, args.steps, compiled)
                steps[compiled] += seconds[SKIP:]
                first[compiled].append(seconds[0])
        eager, fast = (statistics.median(steps[c]) for c in (False, True))
        for compiled, median in ((False, eager), (True, fast)):
            ratio = f"{fast / eager:.2f}" if compiled else ""
            report.add(
                f"| {precision} | {'compiled' if compiled else 'eager'} | {median:.3f} | "
                f"{', '.join(f'{s:.1f}' for s in first[compiled])} | {loss[compiled]:.5g} | "
                f"{ratio} |"
            )
        cold = first[True][0] - statistics.median(first[False])  # the first compile: cold
        saved = eager - fast
        payback = f"{cold / saved:.0f} steps" if saved > 0 else "never (compiled is slower)"
        report.add(f"| {precision} | a cold compile ({cold:.0f} s) pays back after | {payback} |||")
    report.save(args.out)


if __name__ == "__main__":
    main()
