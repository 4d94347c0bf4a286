"""L-BFGS safeguards against pastiche's own optimizer: loss reached per evaluation and per second.

    OMP_NUM_THREADS=1 python -m benchmarks.lbfgs [--sizes 128,192] [--steps 50,30]
        [--issue-steps 50] [--pairs tubingen:starry_night,...] [--images DIR]
        [--out benchmarks/results/lbfgs-cpu.md]

The objective is pastiche 1.6's (``--preset pastiche``: absolute MSE losses, ~1e7 at the start),
the one on which plain L-BFGS diverged in issue 14. Inputs come from ``../shared/images``, resized
once to each size (Pillow Lanczos, PNG), so no tool resamples them (but see the issue's case);
fp32, one image at a time. Candidates, interleaved per case (order rotated), each for the same
number of loss evaluations (= steps; every candidate but strong-Wolfe evaluates once per step):

- nst-batch's batched L-BFGS with ``line_search`` ``none`` / ``backtrack`` / ``reject``, on [0, 1]
  pixels projected onto [0, 1] before every evaluation;
- ``torch.optim.LBFGS(line_search_fn="strong_wolfe")`` on the same objective and pixels, unbatched
  and without projection (its line search assumes an unconstrained problem; the loss of the
  unprojected iterate is what is counted), for reference;
- pastiche's ``PasticheArtist.draw()`` (torch's L-BFGS, ``max_iter=1``, no line search, Caffe
  0-255 pixels, no projection), its own loss.

Cases: the pairs pre-sized to each of ``--sizes`` (the same start for every tool), and issue 14's
setting, the pairs as 256 px files optimized at 128 px (each tool resamples its own way, so the
starts differ; ``--issue-steps 0`` leaves it out). Per-evaluation losses are deterministic on a CPU;
the seconds are not, on a shared machine.

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
from nst_batch.config import StylizeConfig
from nst_batch.engine.losses import LossTerms, compute_targets, objective_weights, weighted_terms
from nst_batch.engine.model import load_model
from nst_batch.engine.optimize import Progress
from nst_batch.images import open_rgb, resize_long_edge, to_tensor
from nst_batch.params import build_config
from nst_batch.transfer import resize_to, stylize_tensors

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "lbfgs-cpu.md"
SAFEGUARDS = ("none", "backtrack", "reject")
STRONG_WOLFE = "torch strong_wolfe (unprojected)"
PASTICHE = "pastiche 1.6 (its own loop)"


@dataclass(frozen=True)
class Trace:
    """One run: (seconds since the loop started, loss) per evaluation, and the loss (nst-batch's
    fp32 objective) of the image the tool outputs: within [0, 1], for pastiche clamped."""

    name: str
    points: tuple[tuple[float, float], ...]
    saved: float

    @property
    def start(self) -> float:
        return self.points[0][1]

    def best(self, seconds: float = math.inf) -> float:
        return min((loss for t, loss in self.points if t <= seconds), default=math.inf)

    @property
    def seconds(self) -> float:
        return self.points[-1][0]


@dataclass(frozen=True)
class Case:
    """Inputs as files and the size every tool is asked for (the issue's case: 256 px files
    optimized at 128 px, each tool resampling them its own way)."""

    label: str
    content: Path
    style: Path
    size: int


def _config(size: int, steps: int, line_search: str) -> StylizeConfig:
    return build_config(
        "pastiche", size=size, steps=steps, scales=1, device="cpu", precision="fp32",
        line_search=line_search, targets_backend="torch",
    )  # fmt: skip


@cache
def _model(size: int) -> torch.nn.Module:
    config = _config(size, 1, "none")
    return load_model(config.model, config.loss.layers, torch.device("cpu"))[0]


def _tensors(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """Content at the output size and the style as read, as ``stylize`` prepares them."""
    content = to_tensor(resize_long_edge(open_rgb(case.content), case.size))
    return content, to_tensor(open_rgb(case.style))


def objective(case: Case) -> Callable[[torch.Tensor], LossTerms]:
    """nst-batch's fp32 pastiche objective for ``case`` (no projection: the caller's business)."""
    config = _config(case.size, 1, "none")
    model = _model(case.size)
    content, style = _tensors(case)
    with torch.no_grad():
        targets = compute_targets(model(content), model(resize_to(style, case.size)), config.loss)
    weights = objective_weights([config.loss])
    return lambda x: weighted_terms(x, model(x), targets, weights)


def _loss(case: Case, image: torch.Tensor) -> float:
    with torch.no_grad():
        return objective(case)(image.clamp(0, 1)).total.sum().item()


def run_safeguard(case: Case, steps: int, name: str) -> Trace:
    config = _config(case.size, steps, name)
    content, style = _tensors(case)
    seen: list[Progress] = []
    result = stylize_tensors(content, [style], config, _model(case.size), seen.append)
    points = tuple((p.elapsed, p.loss) for p in seen)
    return Trace(f"nst-batch {name}", points, _loss(case, result.image))


def run_strong_wolfe(case: Case, steps: int) -> Trace:
    loss_fn = objective(case)
    x = _tensors(case)[0].clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=1, history_size=100,
                            line_search_fn="strong_wolfe")  # fmt: skip
    points: list[tuple[float, float]] = []
    best = (math.inf, x.detach().clone())
    start = time.perf_counter()

    def closure() -> torch.Tensor:
        nonlocal best
        opt.zero_grad()
        loss = loss_fn(x).total.sum()
        loss.backward()
        points.append((time.perf_counter() - start, loss.item()))
        if len(points) <= steps and points[-1][1] < best[0]:
            best = (points[-1][1], x.detach().clone())
        return loss

    while len(points) < steps:
        opt.step(closure)
    return Trace(STRONG_WOLFE, tuple(points[:steps]), _loss(case, best[1]))


def run_pastiche(case: Case, steps: int) -> Trace:
    from pastiche.pastiche import VGG_MEAN

    artist = pastiche_artist(case.content, case.style, case.size)
    points: list[tuple[float, float]] = []
    start = time.perf_counter()
    for _ in range(steps):
        artist.draw()  # one evaluation (at the iterate before the step), then the step
        points.append((time.perf_counter() - start, artist.loss))
    # What pastiche saves: its last iterate, mean added back, BGR -> RGB, clamped to 0-255.
    bgr = artist.pastiche.detach()[0] + torch.tensor(VGG_MEAN)[:, None, None]
    image = (bgr.flip(0) / 255)[None]
    if image.shape[-2:] != _tensors(case)[0].shape[-2:]:  # its own resampling of the content
        image = torch.nn.functional.interpolate(image, size=_tensors(case)[0].shape[-2:])
    return Trace(PASTICHE, tuple(points), _loss(case, image))


def log(message: str) -> None:
    print(f"  ... {message}", file=sys.stderr, flush=True)


def bench_case(case: Case, steps: int, rotate: int, wolfe: bool) -> dict[str, Trace]:
    runners: dict[str, Callable[[], Trace]] = {
        f"nst-batch {s}": (lambda s=s: run_safeguard(case, steps, s)) for s in SAFEGUARDS
    }
    if wolfe:
        runners[STRONG_WOLFE] = lambda: run_strong_wolfe(case, steps)
    runners[PASTICHE] = lambda: run_pastiche(case, steps)
    names = list(runners)
    names = names[rotate % len(names) :] + names[: rotate % len(names)]
    traces = {}
    for name in names:
        log(f"{case.label}, {steps} evaluations: {name}")
        traces[name] = runners[name]()
    return traces


def cases(images: Inputs, args: argparse.Namespace) -> list[tuple[Case, int, bool]]:
    """(case, evaluations, with strong-Wolfe): pre-sized pairs, then the issue's case."""
    pairs = [tuple(p.split(":")) for p in args.pairs.split(",")]
    found = []
    for size, n in zip(_ints(args.sizes), _ints(args.steps), strict=True):
        for c, s in pairs:
            found.append((Case(f"{c}+{s} @{size}", *images.pair(c, s, size), size), n, True))
    for c, s in pairs if args.issue_steps else ():
        label = f"{c}+{s} 256 px files @128"
        found.append((Case(label, *images.pair(c, s, 256), 128), args.issue_steps, False))
    return found


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, default=SHARED)
    parser.add_argument("--sizes", default="128")
    parser.add_argument("--steps", default="50", help="evaluations per size")
    parser.add_argument("--issue-steps", type=int, default=50, help="0: leave the issue's case")
    parser.add_argument("--pairs", default=DEFAULT_PAIRS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    report = Report(
        "# L-BFGS safeguards on the `pastiche` preset (CPU)",
        "",
        f"`python -m benchmarks.lbfgs --sizes {args.sizes} --steps {args.steps} --issue-steps "
        f"{args.issue_steps}`, {cpu_name()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), fp32, one image at a time, candidates "
        "interleaved (order rotated per case) on a shared machine. Losses: pastiche's objective "
        "(absolute). `best` = lowest loss evaluated (each tool's own: pastiche's pixels are not "
        "projected); `saved` = nst-batch's objective of the image the tool outputs (pastiche's "
        "clamped to [0, 255], strong-Wolfe's best clamped to [0, 1]); `at equal s` = lowest loss "
        "within the seconds the fastest candidate of that case needed; `vs pastiche` = best / "
        "pastiche's best. Cases `@N`: files pre-sized to N px (no tool resamples). Cases `256 px "
        "files @128`: issue 14's setting, each tool resampling to 128 px its own way (so the "
        "starts differ). Strong-Wolfe: torch.optim.LBFGS, unbatched and unprojected, reference.",
        "",
        "| case | candidate | evals | start | best | saved | at equal s | s / eval | vs pastiche |",
        "|---|---|---|---|---|---|---|---|---|",
    )
    ratios: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rotate, (case, n, wolfe) in enumerate(cases(Inputs(args.images, Path(tmp)), args)):
            traces = bench_case(case, n, rotate, wolfe)
            common = min(t.seconds for t in traces.values())
            peer = traces[PASTICHE].best()
            for name in sorted(traces):
                t = traces[name]
                ratio = t.best() / peer
                ratios.setdefault(name, []).append(ratio)
                report.add(
                    f"| {case.label} | {name} | {len(t.points)} | {t.start:.4g} | {t.best():.4g} "
                    f"| {t.saved:.4g} | {t.best(common):.4g} | {t.seconds / len(t.points):.3f} "
                    f"| {ratio:.2f} |"
                )
    report.add(
        "",
        "Geometric mean of best / pastiche's best over all cases (< 1: lower loss than pastiche "
        "at equal evaluations):",
        "",
        "| candidate | geo-mean ratio | cases at or below pastiche |",
        "|---|---|---|",
    )
    for name, values in sorted(ratios.items()):
        geo = math.exp(sum(math.log(v) for v in values) / len(values))
        report.add(f"| {name} | {geo:.3f} | {sum(v <= 1 for v in values)}/{len(values)} |")
    report.save(args.out)


if __name__ == "__main__":
    main()
