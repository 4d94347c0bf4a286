"""Seconds per evaluation and per L-BFGS step: the working tree against baseline commits.

    python -m benchmarks.step [--baseline 65b72bf[,main]] [--sizes 256x192,384x288,512x384]
        [--precisions bf16,fp32] [--time-steps 8] [--repeats 3] [--steps 100]
        [--objective-sizes 384x288,512x384] [--profile 384x288] [--quick]
        [--out benchmarks/results/step-cpu.md]

Each tree (this working tree and each baseline, checked out with ``git worktree add`` into a
temporary folder) runs in its own worker process that imports ``nst_batch`` from that tree
(``PYTHONPATH``) and loads the model once. All trees get the same input tensors: tubingen +
starry_night from ``../shared/images`` when present, else the built-in demo pictures, resized
once here to the exact output size (the style to 512 px; each tree resizes it to the output's
long edge its own way). Every measurement is the real loop (``stylize_tensors``, default preset,
one scale, ``targets_backend=torch``, CPU):

- seconds per evaluation: the median step time of an Adam run (one projection, forward and
  backward through the objective, the Adam update) of ``--time-steps`` steps, the first 2 left
  out; seconds per L-BFGS step likewise (each L-BFGS step evaluates once). The trees run
  interleaved, their order alternating, ``--repeats`` times; the table has the median of the
  repeats' medians (the machine is shared and noisy) and the ratio to each baseline;
- the final objective: the best loss of a ``--steps`` run per tree (Adam and L-BFGS), at
  ``--objective-sizes``, in the run's own precision.

- where the time goes: ``--profile`` sizes, each precision, this tree only
  (:mod:`benchmarks.profile_step`: top ops, copies, the convolutions' share and GFLOP/s against
  a measured matmul peak).

``--quick`` is a smoke run: 256x192 only, 4 timed steps, 1 repeat, 5 objective steps.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "step-cpu.md"
MARK = "@@step "  # a worker's reply line (anything else on its stdout is ignored)
WARMUP = 2
# One objective for every tree: this tree's default (65b72bf's default weighed style 1e1 with
# equal layer weights). Each tree's own default line search and Adam step (0.02 in all).
LOSS = {
    "content_layers": [["relu4_2", 1.0]],
    "style_layers": [
        [f"relu{i}_1", w / 341] for i, w in ((1, 256), (2, 64), (3, 16), (4, 4), (5, 1))
    ],
    "content_weight": 1.0,
    "style_weight": 30.0,
    "tv_weight": 1.0,
}


# The worker: runs in a subprocess that imports nst_batch from one tree. It uses only what
# 65b72bf and later trees share (build_config's flat overrides, load_model, stylize_tensors).
def worker() -> None:
    import time

    import torch

    try:  # after the package split
        from nst_batch.engine.model import load_model
        from nst_batch.params import build_config
        from nst_batch.transfer import stylize_tensors
    except ImportError:  # 65b72bf
        from nst_batch.stylize import build_config, load_model, stylize_tensors  # type: ignore

    models: dict[Any, Any] = {}
    sys.stdout, replies = sys.stderr, sys.stdout  # only replies on the pipe
    stamps: list[float] = []  # the loop's elapsed seconds after each step

    def record(progress: Any) -> None:
        stamps.append(progress.elapsed)

    for line in sys.stdin:
        req = json.loads(line)
        content, style = torch.load(req["content"]), torch.load(req["style"])
        config = build_config(
            size=max(content.shape[-2:]), steps=req["steps"], scales=1, device="cpu",
            precision=req["precision"], optimizer=req["optimizer"], targets_backend="torch",
            **{k: tuple(map(tuple, v)) if k.endswith("layers") else v
               for k, v in req["loss"].items()},
        )  # fmt: skip
        m = config.model  # one model per tree for both precisions
        key = (m.weights, m.pooling, m.channels_last, config.loss.layers)
        if key not in models:
            models[key] = load_model(config.model, config.loss.layers, torch.device("cpu"))[0]
        stamps[:] = [0.0]
        start = time.perf_counter()
        result = stylize_tensors(content, style, config, models[key], record)
        wall = time.perf_counter() - start
        seconds = [b - a for a, b in itertools.pairwise(stamps)]
        reply = {"seconds": seconds, "loss": float(result.loss), "wall": wall}
        print(MARK + json.dumps(reply), file=replies, flush=True)


class Tree:
    """A worker process for one tree: ``run`` sends a request and waits for the reply."""

    def __init__(self, label: str, root: Path) -> None:
        self.label = label
        env = {**os.environ, "PYTHONPATH": str(root)}
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=root,
        )  # fmt: skip

    def run(self, **request: Any) -> dict[str, Any]:
        request["loss"] = LOSS
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK) :])
        raise RuntimeError(f"worker for {self.label} exited ({self.proc.wait()})")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def checkout(commit: str, folder: Path) -> Path:
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(folder), commit],
        check=True,
    )
    return folder


def inputs(sizes: list[tuple[int, int]], folder: Path) -> tuple[dict[Any, str], str, str]:
    """Content tensors at each (W, H) and the style at 512 px, saved for the workers."""
    import torch
    from PIL import Image

    from benchmarks.report import benchmark_pictures
    from nst_batch.images import resize_long_edge, to_tensor

    content, style, label = benchmark_pictures()
    paths: dict[Any, str] = {}
    for w, h in sizes:
        paths[w, h] = str(folder / f"content-{w}x{h}.pt")
        torch.save(to_tensor(content.resize((w, h), Image.Resampling.LANCZOS)), paths[w, h])
    style_path = str(folder / "style.pt")
    torch.save(to_tensor(resize_long_edge(style, 512)), style_path)
    return paths, style_path, label


def log(message: str) -> None:
    print(f"  ... {message}", file=sys.stderr, flush=True)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in (p for p in text.split(",") if p):
        w, h = part.split("x")
        sizes.append((int(w), int(h)))
    return sizes


def fmt_size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def timings(
    trees: list[Tree], args: argparse.Namespace, paths: dict[Any, str], style: str
) -> dict[tuple[Any, ...], list[float]]:
    """{(tree, size, precision, optimizer): [median step seconds per repeat]}."""
    found: dict[tuple[Any, ...], list[float]] = {}
    for repeat in range(args.repeats):
        for size in args.sizes:
            for precision in args.precisions:
                for optimizer in ("adam", "lbfgs"):
                    order = trees if repeat % 2 == 0 else trees[::-1]
                    for tree in order:
                        log(f"repeat {repeat + 1}: {fmt_size(size)} {precision} {optimizer} "
                            f"{tree.label}")  # fmt: skip
                        reply = tree.run(
                            content=paths[size], style=style, precision=precision,
                            optimizer=optimizer, steps=args.time_steps + WARMUP,
                        )  # fmt: skip
                        step = statistics.median(reply["seconds"][WARMUP:])
                        found.setdefault((tree.label, size, precision, optimizer), []).append(step)
    return found


def timing_table(report: Any, trees: list[Tree], args: argparse.Namespace, found: dict) -> None:
    new, bases = trees[0].label, [t.label for t in trees[1:]]
    ratios = "".join(f" new / {b} (eval) | new / {b} (L-BFGS) |" for b in bases)
    report.add(
        "",
        f"## Seconds per step (median of {args.repeats} interleaved repeats, each the median of "
        f"{args.time_steps} steps after {WARMUP} warm-up)",
        "",
        "| size | precision | tree | s / evaluation (Adam step) | s / L-BFGS step | "
        "L-BFGS / evaluation |" + ratios,
        "|---|---|---|---|---|---|" + "---|---|" * len(bases),
    )
    med = {k: statistics.median(v) for k, v in found.items()}
    for size in args.sizes:
        for precision in args.precisions:
            for tree in trees:
                ev, lb = (med[tree.label, size, precision, o] for o in ("adam", "lbfgs"))
                row = f"| {fmt_size(size)} | {precision} | {tree.label} | {ev:.3f} | {lb:.3f} "
                row += f"| {lb / ev:.2f} |"
                for b in bases:
                    if tree.label == new:
                        bev, blb = (med[b, size, precision, o] for o in ("adam", "lbfgs"))
                        row += f" {ev / bev:.2f} | {lb / blb:.2f} |"
                    else:
                        row += " | |"
                report.add(row)


def objectives(
    report: Any, trees: list[Tree], args: argparse.Namespace, paths: dict, style: str
) -> None:
    report.add(
        "",
        f"## Final objective after {args.steps} steps (best loss, the run's own precision)",
        "",
        "| size | precision | optimizer | tree | objective | vs new | s / step (median) |",
        "|---|---|---|---|---|---|---|",
    )
    for i, size in enumerate(args.objective_sizes):
        for precision in args.precisions:
            for optimizer in ("adam", "lbfgs"):
                order = trees if i % 2 == 0 else trees[::-1]
                replies = {}
                for tree in order:
                    log(f"objective {fmt_size(size)} {precision} {optimizer} {tree.label}")
                    replies[tree.label] = tree.run(
                        content=paths[size], style=style, precision=precision,
                        optimizer=optimizer, steps=args.steps,
                    )  # fmt: skip
                new_loss = replies[trees[0].label]["loss"]
                for tree in trees:
                    r = replies[tree.label]
                    step = statistics.median(r["seconds"][WARMUP:] or r["seconds"])
                    report.add(
                        f"| {fmt_size(size)} | {precision} | {optimizer} | {tree.label} "
                        f"| {r['loss']:.5f} | {r['loss'] / new_loss:.4f} | {step:.3f} |"
                    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="65b72bf", help="commits, comma-separated")
    parser.add_argument("--sizes", default="256x192,384x288,512x384")
    parser.add_argument("--precisions", default="bf16,fp32")
    parser.add_argument("--time-steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100, help="steps of the objective runs")
    parser.add_argument("--objective-sizes", default="384x288,512x384", help="'' for none")
    parser.add_argument("--profile", default="384x288", help="profile steps at these; '' none")
    parser.add_argument("--quick", action="store_true", help="smoke run (about a minute)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.objective_sizes = "256x192", "256x192"
        args.profile = "256x192" if args.profile else ""
        args.time_steps, args.repeats, args.steps = 4, 1, 5
    args.sizes, args.objective_sizes = parse_sizes(args.sizes), parse_sizes(args.objective_sizes)
    args.profile = parse_sizes(args.profile)
    args.precisions = [p for p in args.precisions.split(",") if p]
    return args


def main() -> None:
    import platform

    import torch

    from benchmarks.profile_step import profile_section, profile_step
    from benchmarks.report import Report, cpu_name

    args = parse_args()
    commits = [c for c in args.baseline.split(",") if c]
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        every = sorted(set(args.sizes + args.objective_sizes + args.profile))
        paths, style, label = inputs(every, folder)
        roots = [checkout(c, folder / f"base-{i}") for i, c in enumerate(commits)]
        trees = [Tree("new", REPO)] + [Tree(c, r) for c, r in zip(commits, roots, strict=True)]
        try:
            report = Report(
                "# Seconds per optimization step: working tree against baselines (CPU)",
                "",
                f"`python -m benchmarks.step {shlex.join(sys.argv[1:])}`".replace(" `", "`"),
                "",
                f"- {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
                f"python {platform.python_version()}; a shared machine",
                f"- new = the working tree (HEAD {head} plus uncommitted changes); baselines: "
                f"{', '.join(commits)}",
                f"- {label}; default preset with this tree's default loss weights (pinned for "
                "every tree), one scale, L-BFGS with each tree's default line search, Adam lr "
                "0.02; trees interleaved, order alternating",
            )
            timing_table(report, trees, args, timings(trees, args, paths, style))
            if args.objective_sizes and args.steps:
                objectives(report, trees, args, paths, style)
            for size in args.profile:  # the working tree only, in this process, workers idle
                for precision in args.precisions:
                    log(f"profile {fmt_size(size)} {precision}")
                    found = profile_step(
                        torch.load(paths[size]), torch.load(style), LOSS, precision
                    )
                    profile_section(report, found)
        finally:
            for tree in trees:
                tree.close()
            for root in roots:
                subprocess.run(
                    ["git", "-C", str(REPO), "worktree", "remove", "--force", str(root)],
                    check=False,
                )
    report.save(args.out)


if __name__ == "__main__":
    if "--worker" in sys.argv:
        worker()
    else:
        main()
