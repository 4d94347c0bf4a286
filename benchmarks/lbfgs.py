"""L-BFGS safeguards against pastiche's own optimizer: loss reached per evaluation and per second.

    OMP_NUM_THREADS=1 python -m benchmarks.lbfgs [--sizes 128,192] [--steps 60,40]
        [--pairs tubingen:starry_night,...] [--images DIR] [--out benchmarks/results/lbfgs-cpu.md]

The objective is pastiche 1.6's (``--preset pastiche``: absolute MSE losses, ~1e7 at the start),
the one on which plain L-BFGS diverged in issue 14. Inputs come from ``../shared/images``, resized
once to each size (Pillow Lanczos, PNG), so no tool resamples them; fp32 everywhere, one image at
a time. Candidates, interleaved per pair (order rotated), each for the same number of loss
evaluations (= steps; every candidate but strong-Wolfe evaluates once per step):

- nst-batch's batched L-BFGS with ``line_search`` ``none`` / ``backtrack`` / ``reject``, on [0, 1]
  pixels projected onto [0, 1] before every evaluation;
- ``torch.optim.LBFGS(line_search_fn="strong_wolfe")`` on the same objective and pixels, unbatched
  and without projection (its line search assumes an unconstrained problem; the loss of the
  unprojected iterate is what is counted), for reference;
- pastiche's ``PasticheArtist.draw()`` (torch's L-BFGS, ``max_iter=1``, no line search, Caffe
  0-255 pixels, no projection), its own loss.

Timed: the optimization loop only (targets excluded for all). Reported per run: the start loss,
the best loss after all evaluations, the best loss within the time the fastest candidate of that
pair needed (loss at equal seconds), and seconds per evaluation. Every number is measured when the
script runs.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from benchmarks.compare_pastiche import DEFAULT_PAIRS, SHARED, Inputs, pastiche_artist
from benchmarks.report import Report, cpu_name
from nst_batch.engine.losses import LossTerms, compute_targets, objective_weights, weighted_terms
from nst_batch.engine.optimize import Progress
from nst_batch.images import open_rgb, to_tensor
from nst_batch.stylize import StylizeConfig, build_config, load_model, stylize_tensors

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "lbfgs-cpu.md"
SAFEGUARDS = ("none", "backtrack", "reject")
STRONG_WOLFE = "torch strong_wolfe (unprojected)"
PASTICHE = "pastiche 1.6 (its own loop)"


@dataclass(frozen=True)
class Trace:
    """One run: (seconds since the loop started, loss) per evaluation."""

    name: str
    points: tuple[tuple[float, float], ...]

    @property
    def start(self) -> float:
        return self.points[0][1]

    def best(self, seconds: float = math.inf) -> float:
        return min((loss for t, loss in self.points if t <= seconds), default=math.inf)

    @property
    def seconds(self) -> float:
        return self.points[-1][0]


def _config(size: int, steps: int, line_search: str) -> StylizeConfig:
    return build_config(
        "pastiche", size=size, steps=steps, scales=1, device="cpu", precision="fp32",
        line_search=line_search, targets_backend="torch",
    )  # fmt: skip


@cache
def _model(size: int) -> torch.nn.Module:
    config = _config(size, 1, "none")
    return load_model(config.model, config.loss.layers, torch.device("cpu"))[0]


def run_safeguard(pair: tuple[Path, Path], size: int, steps: int, name: str) -> Trace:
    config = _config(size, steps, name)
    model = _model(size)
    content, style = (to_tensor(open_rgb(p)) for p in pair)
    seen: list[Progress] = []
    stylize_tensors(content, [style], config, model, seen.append)
    return Trace(f"nst-batch {name}", tuple((p.elapsed, p.loss) for p in seen))


def run_strong_wolfe(pair: tuple[Path, Path], size: int, steps: int) -> Trace:
    config = _config(size, steps, "none")
    model = _model(size)
    content, style = (to_tensor(open_rgb(p)) for p in pair)
    with torch.no_grad():
        targets = compute_targets(model(content), model(style), config.loss)
    weights = objective_weights([config.loss])

    def loss_fn(x: torch.Tensor) -> LossTerms:
        return weighted_terms(x, model(x), targets, weights)

    x = content.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=1, history_size=config.optim.history_size,
                            line_search_fn="strong_wolfe")  # fmt: skip
    points: list[tuple[float, float]] = []
    start = time.perf_counter()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn(x).total.sum()
        loss.backward()
        points.append((time.perf_counter() - start, loss.item()))
        return loss

    while len(points) < steps:
        opt.step(closure)
    return Trace(STRONG_WOLFE, tuple(points[:steps]))


def run_pastiche(pair: tuple[Path, Path], size: int, steps: int) -> Trace:
    artist = pastiche_artist(pair[0], pair[1], size)
    points: list[tuple[float, float]] = []
    start = time.perf_counter()
    for _ in range(steps):
        artist.draw()  # one evaluation (at the iterate before the step), then the step
        points.append((time.perf_counter() - start, artist.loss))
    return Trace(PASTICHE, tuple(points))


def log(message: str) -> None:
    print(f"  ... {message}", file=sys.stderr, flush=True)


def bench_pair(pair: tuple[Path, Path], size: int, steps: int, rotate: int) -> dict[str, Trace]:
    runners: dict[str, Callable[[], Trace]] = {
        f"nst-batch {s}": (lambda s=s: run_safeguard(pair, size, steps, s)) for s in SAFEGUARDS
    }
    runners[STRONG_WOLFE] = lambda: run_strong_wolfe(pair, size, steps)
    runners[PASTICHE] = lambda: run_pastiche(pair, size, steps)
    names = list(runners)
    names = names[rotate % len(names) :] + names[: rotate % len(names)]
    traces = {}
    for name in names:
        log(f"{pair[0].stem} + {pair[1].stem}, {steps} evaluations: {name}")
        traces[name] = runners[name]()
    return traces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, default=SHARED)
    parser.add_argument("--sizes", default="128,192")
    parser.add_argument("--steps", default="60,40", help="evaluations per size")
    parser.add_argument("--pairs", default=DEFAULT_PAIRS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    steps = [int(s) for s in args.steps.split(",")]
    pairs = [tuple(p.split(":")) for p in args.pairs.split(",")]
    report = Report(
        "# L-BFGS safeguards on the `pastiche` preset (CPU)",
        "",
        f"`python -m benchmarks.lbfgs --sizes {args.sizes} --steps {args.steps}`, "
        f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), fp32, "
        "inputs pre-sized (no resampling by either tool). Losses are pastiche's objective "
        "(absolute). `best` = lowest loss over all evaluations; `at equal s` = lowest loss "
        "within the seconds the fastest candidate of that row group needed; `vs pastiche` = "
        "best / pastiche's best (< 1: lower). Strong-Wolfe runs unbatched and unprojected "
        "(reference only).",
        "",
        "| size (WxH) | pair | candidate | evals | start | best | at equal s | s / eval "
        "| vs pastiche |",
        "|---|---|---|---|---|---|---|---|---|",
    )
    ratios: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        images = Inputs(args.images, Path(tmp))
        rotate = 0
        for size, n in zip(sizes, steps, strict=True):
            for content, style in pairs:
                pair = images.pair(content, style, size)
                w, h = open_rgb(pair[0]).size
                traces = bench_pair(pair, size, n, rotate)
                rotate += 1
                common = min(t.seconds for t in traces.values())
                peer = traces[PASTICHE].best()
                for name in sorted(traces):
                    t = traces[name]
                    ratio = t.best() / peer
                    ratios.setdefault(name, []).append(ratio)
                    report.add(
                        f"| {w}x{h} | {content}+{style} | {name} | {len(t.points)} "
                        f"| {t.start:.4g} | {t.best():.4g} | {t.best(common):.4g} "
                        f"| {t.seconds / len(t.points):.3f} | {ratio:.2f} |"
                    )
    report.add(
        "",
        "Geometric mean of best / pastiche's best over all rows (< 1: lower loss than pastiche "
        "at equal evaluations):",
        "",
        "| candidate | geo-mean ratio | rows at or below pastiche |",
        "|---|---|---|",
    )
    for name, values in sorted(ratios.items()):
        geo = math.exp(sum(math.log(v) for v in values) / len(values))
        report.add(f"| {name} | {geo:.3f} | {sum(v <= 1 for v in values)}/{len(values)} |")
    report.save(args.out)


if __name__ == "__main__":
    main()
