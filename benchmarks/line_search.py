"""L-BFGS safeguards per preset: the loss each reaches after the same number of evaluations.

    OMP_NUM_THREADS=1 python -m benchmarks.line_search [--size 192] [--steps 30]
        [--presets default,equal-layers,pastiche] [--pairs tubingen:starry_night,...]
        [--out benchmarks/results/line-search-cpu.md]

``benchmarks/lbfgs.py`` compares the safeguards with pastiche's own optimizer on pastiche's
objective; this one asks which safeguard to make the default across nst-batch's own presets. Each
pair from ../shared/images (else the built-in demo pictures) is resized once to ``--size``; every
safeguard runs the same number of steps (one evaluation each: a backtracking retry is a step) from
the content, fp32, one scale, and the table gives the start, the best loss after 10 steps and at
the end (relative to the start), and seconds per step. Losses are deterministic on a CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.report import SHARED, Report, benchmark_pictures, cpu_name
from nst_batch.engine.model import load_model
from nst_batch.images import open_rgb, resize_long_edge, to_tensor
from nst_batch.params import build_config
from nst_batch.transfer import stylize_tensors

REPO = Path(__file__).resolve().parents[1]
SAFEGUARDS = ("reject", "backtrack")


def pairs(names: str, size: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    if not (SHARED / "tubingen.jpg").is_file():
        content, style, label = benchmark_pictures()
        return [(label, to_tensor(resize_long_edge(content, size)), to_tensor(style))]
    out = []
    for pair in names.split(","):
        c, s = pair.split(":")
        content = to_tensor(resize_long_edge(open_rgb(SHARED / f"{c}.jpg"), size))
        style = to_tensor(resize_long_edge(open_rgb(SHARED / f"{s}.jpg"), size))
        out.append((f"{c}+{s}", content, style))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--presets", default="default,equal-layers,pastiche")
    parser.add_argument(
        "--pairs", default="tubingen:starry_night,golden_gate:woman-with-hat-matisse"
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/line-search-cpu.md")
    args = parser.parse_args()
    report = Report(
        "# L-BFGS safeguards per preset (CPU)",
        "",
        f"`python -m benchmarks.line_search --size {args.size} --steps {args.steps} "
        f"--presets {args.presets} --pairs {args.pairs}`; {cpu_name()}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} thread(s), fp32, one scale, content init. "
        "`best@10`, `best@end`: the lowest loss after 10 and after all steps, as a fraction of "
        "the start (lower is better).",
        "",
        "| preset | pair | safeguard | start | best@10 | best@end | s / step |",
        "|---|---|---|---|---|---|---|",
    )
    inputs = pairs(args.pairs, args.size)
    for preset in args.presets.split(","):
        for label, content, style in inputs:
            for line_search in SAFEGUARDS:
                config = build_config(
                    preset, size=args.size, steps=args.steps, scales=1, device="cpu",
                    precision="fp32", line_search=line_search,
                )  # fmt: skip
                model, _ = load_model(config.model, config.loss.layers, torch.device("cpu"))
                result = stylize_tensors(content, [style], config, model)
                losses = [p.loss for p in result.history]
                start = losses[0]
                report.add(
                    f"| {preset} | {label} | {line_search} | {start:.4g} | "
                    f"{min(losses[:10]) / start:.3f} | {min(losses) / start:.3f} | "
                    f"{result.elapsed / len(losses):.3f} |"
                )
    report.save(args.out)


if __name__ == "__main__":
    main()
