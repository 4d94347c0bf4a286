"""One L-BFGS step's own cost (the step minus the evaluation): this tree's BatchedLBFGS against a
baseline commit's, interleaved in one run.

    python -m benchmarks.lbfgs_step [--baseline a4635aa] [--sizes 384x288,512x384] [--history 100]
        [--repeats 5] [--time-steps 3] [--out benchmarks/results/lbfgs-step-cpu.md]

The baseline's ``nst_batch/engine/lbfgs.py`` is read with ``git show`` and loaded as a module of
its own, so both run in this process on the same data. The objective is a separable quadratic
``0.5 sum a (x - c)^2`` (a log-spaced over 1e-4..1, condition 1e4) whose gradient costs one
element-wise pass, so the timed ``step()`` is the optimizer's overhead alone; an image-sized
evaluation would only add the same constant to both. Each optimizer first takes ``history + 5``
steps (``line_search="backtrack"``, the default) so its ring is full and wraps, as in a long run;
then, per repeat, old and new (order alternating) each time ``--time-steps`` steps. Reported:
medians over all timed steps, and the largest difference between the two optimizers' iterates
after the warm-up (float32, so rounding only).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.report import Report, cpu_name
from nst_batch.engine.lbfgs import BatchedLBFGS

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "lbfgs-step-cpu.md"
MODULE = "nst_batch/engine/lbfgs.py"


def baseline_class(commit: str) -> type:
    """BatchedLBFGS as ``commit`` has it, loaded from its source without checking it out."""
    source = subprocess.run(
        ["git", "show", f"{commit}:{MODULE}"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "lbfgs_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("lbfgs_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BatchedLBFGS


class Problem:
    """A quadratic over one (1, 3, H, W) image and an optimizer on it."""

    def __init__(self, cls: type, n_shape: tuple[int, ...], history: int) -> None:
        gen = torch.Generator().manual_seed(0)
        n = torch.Size(n_shape).numel()
        self.a = torch.logspace(-4, 0, n)[torch.randperm(n, generator=gen)].view(n_shape)
        self.c = torch.rand(n_shape, generator=gen)
        self.x = torch.rand(n_shape, generator=gen)
        self.opt = cls(self.x, 1.0, history, "backtrack")

    def step(self) -> float:
        """One step; seconds spent in ``step()`` only."""
        diff = self.x - self.c
        loss = (0.5 * self.a * diff * diff).flatten(1).sum(1)
        grad = self.a * diff
        start = time.perf_counter()
        self.opt.step(grad, loss)
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="a4635aa")  # the module before the one-tensor history
    parser.add_argument("--sizes", default="384x288,512x384")
    parser.add_argument("--history", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--time-steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    old_cls = baseline_class(args.baseline)
    report = Report(
        "# One L-BFGS step's overhead: this tree against a baseline (CPU)",
        "",
        f"`python -m benchmarks.lbfgs_step {' '.join(sys.argv[1:])}`".replace(" `", "`"),
        "",
        f"- {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        "a shared machine",
        f"- old = `{MODULE}` at {args.baseline}; new = this tree's; B = 1, float32, "
        f"m = {args.history}, ring full, line_search backtrack",
        f"- medians of {args.repeats} interleaved repeats x {args.time_steps} steps each",
        "",
        "| size | N | history (MB) | old ms / step | new ms / step | new / old | max abs x diff |",
        "|---|---|---|---|---|---|---|",
    )
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.split("x"))
        shape = (1, 3, h, w)
        problems = {"old": Problem(old_cls, shape, args.history)}
        problems["new"] = Problem(BatchedLBFGS, shape, args.history)
        for problem in problems.values():  # fill the ring and wrap it
            for _ in range(args.history + 5):
                problem.step()
        x_diff = (problems["old"].x - problems["new"].x).abs().max().item()
        times: dict[str, list[float]] = {"old": [], "new": []}
        for repeat in range(args.repeats):
            order = ["old", "new"] if repeat % 2 == 0 else ["new", "old"]
            for name in order:
                times[name] += [problems[name].step() for _ in range(args.time_steps)]
        old, new = (statistics.median(times[k]) * 1e3 for k in ("old", "new"))
        n = 3 * h * w
        mb = 2 * args.history * n * 4 / 1e6
        report.add(
            f"| {size} | {n} | {mb:.0f} | {old:.1f} | {new:.1f} | {new / old:.2f} | {x_diff:.1e} |"
        )
        del problems
    report.save(args.out)


if __name__ == "__main__":
    main()
