"""The optimization loop: pixels of a batch of [0, 1] RGB images, L-BFGS or Adam.

The loop never prints or saves; it reports each step through a callback with a :class:`Progress`
and returns the best image it evaluated. Every evaluated image is first projected onto [0, 1], so
the returned image is exactly one whose loss was measured. The result also keeps, per image, the
four terms of the returned image (all from that one iterate), the loss at the start, and whether
the returned image is better than the start (:attr:`OptimizeResult.failures`: a diverged run is
reported, never passed off as a success; printing it is the caller's business).

A batch (B, 3, H, W) is B independent jobs: the loss function returns one value per image, each
image keeps its own L-BFGS history (:class:`~nst_batch.engine.lbfgs.BatchedLBFGS`) or Adam moments
(element-wise by construction) and its own best image, so a job's result does not depend on its
batch mates. On CUDA the evaluation (Adam: the whole step) replays as a CUDA graph and the loop
reads numbers back only every ``sync_every`` steps, so the GPU never waits for Python.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import Tensor

from nst_batch.engine.graphs import Replay
from nst_batch.engine.lbfgs import LINE_SEARCHES, BatchedLBFGS, LineSearch
from nst_batch.engine.losses import LossTerms
from nst_batch.errors import ConfigError

OptimizerName = Literal["lbfgs", "adam"]
# Step sizes on the [0, 1] pixel scale. L-BFGS scales its own steps, so 1.0 is the usual choice;
# 0.02 for Adam moves a pixel by ~5 grey levels per step at first.
DEFAULT_LR: dict[str, float] = {"lbfgs": 1.0, "adam": 0.02}
# Steps between reads of the loss on the host (progress, time budget, early stop) on a GPU; on
# a CPU reading is free and happens every step.
CUDA_SYNC_EVERY = 25


@dataclass(frozen=True)
class OptimConfig:
    optimizer: OptimizerName = "lbfgs"
    steps: int = 300
    lr: float | None = None  # None: DEFAULT_LR of the optimizer
    history_size: int = 100  # L-BFGS curvature pairs kept
    # L-BFGS safeguard against bad quasi-Newton steps, per image (nst_batch.engine.lbfgs):
    # "backtrack" (Armijo line search; the default: on the default preset it reached 0.05 of the
    # start where "reject" stopped at 0.79, benchmarks/results/line-search-cpu.md), "reject"
    # (undo a step that more than doubles the loss; within 2% of it on the pastiche preset), "none"
    line_search: LineSearch = "backtrack"
    ema: float = 0.0  # decay of an exponential moving average of the iterates; 0 = off
    max_seconds: float | None = None  # time budget for the loop
    tolerance: float = 0.0  # early stop: best loss improved by less than this fraction ...
    window: int = 50  # ... over this many steps; tolerance 0 = never
    sync_every: int | None = None  # read losses every N steps; None: 1 on CPU, 25 on CUDA

    def __post_init__(self) -> None:
        if self.optimizer not in DEFAULT_LR:
            raise ConfigError(f"optimizer must be 'lbfgs' or 'adam', not {self.optimizer!r}")
        if self.steps < 1:
            raise ConfigError(f"steps must be at least 1, not {self.steps}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be positive, not {self.lr}")
        if self.history_size < 1:
            raise ConfigError(f"history_size must be at least 1, not {self.history_size}")
        if self.line_search not in LINE_SEARCHES:
            raise ConfigError(
                f"line_search must be one of {', '.join(LINE_SEARCHES)}, not {self.line_search!r}"
            )
        if not 0 <= self.ema < 1:
            raise ConfigError(f"ema must be in [0, 1), not {self.ema}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ConfigError(f"max_seconds must be positive, not {self.max_seconds}")
        if self.tolerance < 0 or self.window < 1:
            raise ConfigError("tolerance must be >= 0 and window >= 1")
        if self.sync_every is not None and self.sync_every < 1:
            raise ConfigError(f"sync_every must be at least 1, not {self.sync_every}")

    @property
    def step_size(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]


@dataclass(frozen=True)
class Progress:
    """One optimizer step, as reported to the callback. Losses are the weighted terms, summed
    over the batch; ``jobs`` has each image's (total, content, style, tv)."""

    step: int  # 1-based
    total: int
    loss: float
    content: float
    style: float
    tv: float
    elapsed: float  # seconds since the loop started
    # The iterate just evaluated, (B, 3, H, W); a live tensor: clone it to keep it. Given at the
    # steps where the loop reads back from the device (every step on CPU), else None.
    image: Tensor | None = field(default=None, repr=False, compare=False)
    scale: int = 0  # pyramid level (0 = coarsest) when optimizing coarse to fine
    jobs: tuple[tuple[float, float, float, float], ...] = field(default=(), repr=False)

    def job(self, index: int) -> Progress:
        """This step as seen by one image of the batch."""
        total, content, style, tv = self.jobs[index]
        image = None if self.image is None else self.image[index : index + 1]
        return replace(
            self,
            loss=total,
            content=content,
            style=style,
            tv=tv,
            image=image,
            jobs=(self.jobs[index],),
        )


StopReason = Literal["steps", "converged", "time", "interrupted"]


Terms = tuple[float, float, float, float]  # an image's (total, content, style, tv)


@dataclass
class OptimizeResult:
    image: Tensor  # (B, 3, H, W) in [0, 1]: the best image evaluated, or the iterate average
    loss: float  # its loss (summed over the batch)
    steps: int  # steps completed
    elapsed: float  # seconds
    stop_reason: StopReason
    history: list[Progress] = field(default_factory=list)
    losses: tuple[float, ...] = ()  # each image's loss
    terms: tuple[Terms, ...] = ()  # each image's terms, all of the returned image
    start_losses: tuple[float, ...] = ()  # each image's loss at the first evaluation
    # Per image: "" when the returned image's loss is below the start's, else why not.
    failures: tuple[str, ...] = ()

    @property
    def interrupted(self) -> bool:
        return self.stop_reason == "interrupted"

    @property
    def converged(self) -> bool:
        """Every image ended below its starting loss (not to be confused with the early stop,
        ``stop_reason == "converged"``)."""
        return not any(self.failures)


def judge(losses: Sequence[float], starts: Sequence[float]) -> tuple[str, ...]:
    """Per image, "" when the loss went below the start, else the reason (for sidecars)."""
    return tuple(
        "" if loss < start else f"final loss {loss:.4g} is not below the starting loss {start:.4g}"
        for loss, start in zip(losses, starts, strict=True)
    )


def optimize(
    init: Tensor,
    loss_fn: Callable[[Tensor], LossTerms],
    config: OptimConfig,
    callback: Callable[[Progress], None] | None = None,
    graphs: bool = True,
    cancel_check: Callable[[], None] | None = None,
    min_steps: int = 0,
) -> OptimizeResult:
    """Minimise ``loss_fn`` over the pixels of ``init`` (B, 3, H, W), kept in [0, 1].

    ``loss_fn`` gives each image's terms, shape (B,) (scalars will do for B = 1). Stops after
    ``config.steps``, on the time budget, on early convergence, or on KeyboardInterrupt (Ctrl-C);
    in every case the result holds the best image so far (or the iterate average when
    ``config.ema`` is set) so the caller can save it. ``graphs`` replays the evaluation as a
    CUDA graph on CUDA (no effect elsewhere). ``cancel_check`` is called before every step (also
    between the host reads of ``sync_every``, unlike ``callback``); whatever it raises ends the
    loop and propagates (how a daemon cancels a job within one step). The time budget stops the
    loop only after ``min_steps`` steps.
    """
    x = init.detach().clone().clamp_(0, 1).contiguous().requires_grad_(True)
    b = x.shape[0]
    best_image = x.detach().clone()
    current = x.detach().clone()  # the latest evaluated iterate, as reported in Progress
    average = x.detach().clone() if config.ema else None
    best_loss = torch.full((b,), float("inf"), device=x.device, dtype=x.dtype)
    # The best iterate's four terms, so the parts of a final loss all come from one image.
    best_terms = torch.zeros(4, b, device=x.device, dtype=x.dtype)
    start_loss = torch.zeros_like(best_loss)  # each image's first evaluated loss
    x.grad = torch.zeros_like(x)
    adam = None
    if config.optimizer == "adam":
        # capturable: the step count lives on the device, so the whole step can be a graph.
        adam = torch.optim.Adam([x], lr=config.step_size, capturable=x.is_cuda)
    lbfgs = None
    if config.optimizer == "lbfgs":
        lbfgs = BatchedLBFGS(x.detach(), config.step_size, config.history_size, config.line_search)

    def evaluate() -> Tensor:
        """Project, evaluate, keep the best; Adam also steps. Returns (4, B) terms."""
        with torch.no_grad():
            x.clamp_(0, 1)
            current.copy_(x)
            if average is not None:
                average.lerp_(current, 1 - config.ema)
        terms = loss_fn(x)
        (grad,) = torch.autograd.grad(terms.total.sum(), x)
        with torch.no_grad():
            values = torch.stack([terms.total, terms.content, terms.style, terms.tv])
            values = values.reshape(4, b).to(best_loss.dtype)
            better = values[0] < best_loss
            best_loss.copy_(torch.where(better, values[0], best_loss))
            best_terms.copy_(torch.where(better, values, best_terms))
            best_image.copy_(torch.where(better[:, None, None, None], current, best_image))
            x.grad.copy_(grad)
        if adam is not None:
            adam.step()
        return values

    run = Replay(evaluate, x.device, enabled=graphs)
    sync_every = config.sync_every or (CUDA_SYNC_EVERY if x.is_cuda else 1)
    history: list[Progress] = []
    pending: list[tuple[Tensor, float]] = []  # (4, B) terms not yet read, with their times
    best_so_far: list[float] = []  # best loss after each step, for the convergence window
    running_best = [float("inf")] * b
    start = time.perf_counter()
    reason: StopReason = "steps"
    try:
        for step in range(1, config.steps + 1):
            if cancel_check is not None:
                cancel_check()
            values = run()
            if step == 1:
                start_loss.copy_(values[0])  # on the device: read once, after the loop
            if lbfgs is not None:
                lbfgs.step(x.grad, values[0])
            # After capture every replay refreshes the same tensor: keep a copy (on the device).
            pending.append((values.clone() if run.captured else values, time.perf_counter()))
            if step % sync_every and step != config.steps:
                continue
            rows = torch.stack([v for v, _ in pending]).tolist()  # the one host read
            now = time.perf_counter()
            for i, (row, (_, issued)) in enumerate(zip(rows, pending, strict=True)):
                last = i == len(rows) - 1
                jobs = tuple(zip(*row, strict=True))  # B x (total, content, style, tv)
                running_best = [min(r, j[0]) for r, j in zip(running_best, jobs, strict=True)]
                best_so_far.append(sum(running_best))
                n = step - len(rows) + 1 + i
                p = Progress(
                    n,
                    config.steps,
                    *map(sum, row),
                    elapsed=(now if last else issued) - start,
                    image=current if last else None,
                    jobs=jobs,
                )
                history.append(p)
                if callback is not None:
                    callback(p)
            pending.clear()
            elapsed = now - start
            budget = config.max_seconds
            if budget is not None and elapsed >= budget and step >= min_steps:
                reason = "time"
                break
            if config.tolerance and step > config.window:
                before, best = best_so_far[-1 - config.window], best_so_far[-1]
                if before - best < config.tolerance * abs(before):
                    reason = "converged"
                    break
    except KeyboardInterrupt:
        reason = "interrupted"
    image, terms = best_image, best_terms
    if average is not None and history:
        with torch.no_grad():
            t = loss_fn(average)
            image = average
            terms = torch.stack([t.total, t.content, t.style, t.tv]).reshape(4, b)
    rows: list[Terms] = [tuple(column) for column in terms.T.tolist()] if history else []
    losses = [row[0] for row in rows] if history else best_loss.tolist()
    starts = start_loss.tolist() if history else []
    return OptimizeResult(
        image=image,
        loss=float(sum(losses)),
        steps=len(history),
        elapsed=time.perf_counter() - start,
        stop_reason=reason,
        history=history,
        losses=tuple(losses),
        terms=tuple(rows),
        start_losses=tuple(starts),
        # One evaluation took no step: nothing was optimized, so nothing can have failed.
        failures=judge(losses, starts) if len(history) > 1 else ("",) * len(losses),
    )
