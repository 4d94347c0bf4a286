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
batch mates. On CUDA the evaluation (Adam: the whole step) replays as a CUDA graph, the L-BFGS
update as another once its history is full, and the loop reads numbers back only every
``sync_every`` steps, so the GPU never waits for Python.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from nst_batch.engine.graphs import Replay
from nst_batch.engine.lbfgs import BatchedLBFGS, LineSearch
from nst_batch.engine.losses import LossTerms
from nst_batch.engine.memory import MemoryPlan
from nst_batch.validation import check_fields

OptimizerName = Literal["lbfgs", "adam"]
# Step sizes on the [0, 1] pixel scale. L-BFGS scales its own steps, so 1.0 is the usual choice;
# 0.02 for Adam moves a pixel by ~5 grey levels per step at first.
DEFAULT_LR: dict[str, float] = {"lbfgs": 1.0, "adam": 0.02}
# Steps between reads of the loss on the host (progress, time budget, early stop) on a GPU; on
# a CPU reading is free and happens every step.
CUDA_SYNC_EVERY = 25


@dataclass(frozen=True)
class OptimConfig:
    optimizer: OptimizerName = "lbfgs"  # L-BFGS or Adam
    steps: Annotated[int, Field(ge=1)] = 300  # iterations (at the finest scale)
    lr: Annotated[float, Field(gt=0)] | None = None  # step; None: DEFAULT_LR[optimizer]
    history_size: Annotated[int, Field(ge=1)] = 100  # L-BFGS curvature pairs kept
    # L-BFGS safeguard against bad quasi-Newton steps, per image (nst_batch.engine.lbfgs):
    # "backtrack" (Armijo line search; the default: on the default preset it reached 0.05 of the
    # start where "reject" stopped at 0.79, benchmarks/results/line-search-cpu.md), "reject"
    # (undo a step that more than doubles the loss; within 2% of it on the pastiche preset), "none"
    line_search: LineSearch = "backtrack"
    # decay of an exponential moving average of the iterates; 0 = off
    ema: Annotated[float, Field(ge=0, lt=1)] = 0.0
    max_seconds: Annotated[float, Field(gt=0)] | None = None  # time budget for the loop
    # early stop: best loss improved by less than this fraction over `window` steps; 0 = never
    tolerance: Annotated[float, Field(ge=0)] = 0.0
    window: Annotated[int, Field(ge=1)] = 50  # steps the early stop looks back over
    # read losses every N steps; None: 1 on CPU, 25 on CUDA
    sync_every: Annotated[int, Field(ge=1)] | None = None

    def __post_init__(self) -> None:
        check_fields(self)  # ranges (Field) and choices (Literal): ConfigError naming the field

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
# x (B, 3, H, W) -> each image's terms and the gradient of their sum, (B, 3, H, W)
ValueAndGrad = Callable[[Tensor], tuple[LossTerms, Tensor]]


def autograd_gradient(loss_fn: Callable[[Tensor], LossTerms]) -> ValueAndGrad:
    """The terms of ``loss_fn`` and their gradient by one backward pass through it."""

    def value_and_grad(x: Tensor) -> tuple[LossTerms, Tensor]:
        with torch.enable_grad():
            leaf = x if x.requires_grad else x.detach().requires_grad_(True)
            terms = loss_fn(leaf)
            (grad,) = torch.autograd.grad(terms.total.sum(), leaf)
        return terms, grad

    return value_and_grad


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
    # CUDA graphs: "on", "off" (not CUDA, or disabled) or "fallback: <reason>" (ran eagerly)
    graphs: str = "off"
    memory: MemoryPlan | None = None  # how the (last) optimization fitted its memory budget

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


class _Iterates:
    """The loop's device-side state. Every tensor is allocated once, before the loop: a CUDA
    graph of :meth:`evaluate` replays into these same buffers."""

    def __init__(self, init: Tensor, gradient: ValueAndGrad, ema: float) -> None:
        x = init.detach().clone().clamp_(0, 1).contiguous().requires_grad_(True)
        self.x = x  # (B, 3, H, W), the optimized pixels
        self.b = x.shape[0]
        self.gradient, self.ema = gradient, ema
        self.best_image = x.detach().clone()
        self.current = x.detach().clone()  # the latest evaluated iterate, as reported
        self.average = x.detach().clone() if ema else None
        self.best_loss = torch.full((self.b,), float("inf"), device=x.device, dtype=x.dtype)
        # The best iterate's four terms, so the parts of a final loss all come from one image.
        self.best_terms = torch.zeros(4, self.b, device=x.device, dtype=x.dtype)  # (4, B)
        self.start_loss = torch.zeros_like(self.best_loss)  # each image's first loss
        x.grad = torch.zeros_like(x)
        self.adam: torch.optim.Adam | None = None

    def evaluate(self) -> Tensor:
        """Project, evaluate, keep the best; Adam also steps. Returns (4, B) terms."""
        x = self.x
        with torch.no_grad():
            x.clamp_(0, 1)
            self.current.copy_(x)
            if self.average is not None:
                self.average.lerp_(self.current, 1 - self.ema)
        terms, grad = self.gradient(x)
        with torch.no_grad():
            values = torch.stack([terms.total, terms.content, terms.style, terms.tv])
            values = values.reshape(4, self.b).to(self.best_loss.dtype)
            better = values[0] < self.best_loss
            self.best_loss.copy_(torch.where(better, values[0], self.best_loss))
            self.best_terms.copy_(torch.where(better, values, self.best_terms))
            self.best_image.copy_(
                torch.where(better[:, None, None, None], self.current, self.best_image)
            )
            assert x.grad is not None
            x.grad.copy_(grad)
        if self.adam is not None:
            self.adam.step()
        return values

    def final(self, evaluated: bool) -> tuple[Tensor, list[Terms]]:
        """The image to return and its per-image terms (none when nothing was evaluated)."""
        image, terms = self.best_image, self.best_terms
        if self.average is not None and evaluated:
            t, _ = self.gradient(self.average)
            with torch.no_grad():
                image = self.average
                terms = torch.stack([t.total, t.content, t.style, t.tv]).reshape(4, self.b)
        rows: list[Terms] = [tuple(c) for c in terms.T.tolist()] if evaluated else []
        return image, rows


class _Reader:
    """Host-side bookkeeping: losses read back in bulk (every ``sync_every`` steps), turned into
    :class:`Progress` records, and the best-so-far curve the early stop looks at."""

    def __init__(self, steps: int, b: int, callback: Callable[[Progress], None] | None) -> None:
        self.steps, self.callback = steps, callback
        self.history: list[Progress] = []
        self.pending: list[tuple[Tensor, float]] = []  # (4, B) terms not yet read, with times
        self.best_so_far: list[float] = []  # best loss after each step
        self.running_best = [float("inf")] * b
        self.start = time.perf_counter()

    def read(self, step: int, current: Tensor) -> float:
        """Read the pending steps (the one host sync), report them; seconds since the start."""
        rows = torch.stack([v for v, _ in self.pending]).tolist()
        now = time.perf_counter()
        for i, (row, (_, issued)) in enumerate(zip(rows, self.pending, strict=True)):
            last = i == len(rows) - 1
            jobs = tuple(zip(*row, strict=True))  # B x (total, content, style, tv)
            self.running_best = [min(r, j[0]) for r, j in zip(self.running_best, jobs, strict=True)]
            self.best_so_far.append(sum(self.running_best))
            p = Progress(
                step - len(rows) + 1 + i,
                self.steps,
                *map(sum, row),
                elapsed=(now if last else issued) - self.start,
                image=current if last else None,
                jobs=jobs,
            )
            self.history.append(p)
            if self.callback is not None:
                self.callback(p)
        self.pending.clear()
        return now - self.start

    def stop(self, config: OptimConfig, step: int, elapsed: float, min_steps: int) -> StopReason:
        """Why to stop after this read, or "steps" to go on."""
        budget = config.max_seconds
        if budget is not None and elapsed >= budget and step >= min_steps:
            return "time"
        if config.tolerance and step > config.window:
            before, best = self.best_so_far[-1 - config.window], self.best_so_far[-1]
            if before - best < config.tolerance * abs(before):
                return "converged"
        return "steps"


def optimize(
    init: Tensor,
    loss_fn: Callable[[Tensor], LossTerms],
    config: OptimConfig,
    callback: Callable[[Progress], None] | None = None,
    graphs: bool = True,
    cancel_check: Callable[[], None] | None = None,
    min_steps: int = 0,
    gradient: ValueAndGrad | None = None,
) -> OptimizeResult:
    """Minimise ``loss_fn`` over the pixels of ``init`` (B, 3, H, W), kept in [0, 1].

    ``loss_fn`` gives each image's terms, shape (B,) (scalars will do for B = 1). Stops after
    ``config.steps``, on the time budget, on early convergence, or on KeyboardInterrupt (Ctrl-C);
    in every case the result holds the best image so far (or the iterate average when
    ``config.ema`` is set) so the caller can save it. ``graphs`` replays the evaluation as a
    CUDA graph on CUDA (no effect elsewhere). ``cancel_check`` is called before every step (also
    between the host reads of ``sync_every``, unlike ``callback``); whatever it raises ends the
    loop and propagates (how a daemon cancels a job within one step). The time budget stops the
    loop only after ``min_steps`` steps. ``gradient`` evaluates terms and gradient in place of
    a backward pass through ``loss_fn`` (:class:`~nst_batch.engine.tiled.TiledObjective`).
    """
    state = _Iterates(init, gradient or autograd_gradient(loss_fn), config.ema)
    x = state.x
    if config.optimizer == "adam":
        # capturable: the step count lives on the device, so the whole step can be a graph.
        state.adam = torch.optim.Adam([x], lr=config.step_size, capturable=x.is_cuda)
    lbfgs = None
    if config.optimizer == "lbfgs":
        lbfgs = BatchedLBFGS(
            x.detach(), config.step_size, config.history_size, config.line_search, graphs
        )
    run = Replay(state.evaluate, x.device, enabled=graphs)
    sync_every = config.sync_every or (CUDA_SYNC_EVERY if x.is_cuda else 1)
    reader = _Reader(config.steps, state.b, callback)
    reason: StopReason = "steps"
    try:
        for step in range(1, config.steps + 1):
            if cancel_check is not None:
                cancel_check()
            values = run()
            if step == 1:
                state.start_loss.copy_(values[0])  # on the device: read once, after the loop
            if lbfgs is not None:
                assert x.grad is not None
                lbfgs.step(x.grad, values[0])
            # After capture every replay refreshes the same tensor: keep a copy (on the device).
            reader.pending.append((values.clone() if run.captured else values, time.perf_counter()))
            if step % sync_every and step != config.steps:
                continue
            reason = reader.stop(config, step, reader.read(step, state.current), min_steps)
            if reason != "steps":
                break
    except KeyboardInterrupt:
        reason = "interrupted"
    history = reader.history
    image, rows = state.final(bool(history))
    losses = [row[0] for row in rows] if history else state.best_loss.tolist()
    starts = state.start_loss.tolist() if history else []
    return OptimizeResult(
        image=image,
        loss=float(sum(losses)),
        steps=len(history),
        elapsed=time.perf_counter() - reader.start,
        stop_reason=reason,
        history=history,
        losses=tuple(losses),
        terms=tuple(rows),
        start_losses=tuple(starts),
        # One evaluation took no step: nothing was optimized, so nothing can have failed.
        failures=judge(losses, starts) if len(history) > 1 else ("",) * len(losses),
        graphs=graph_status(run.status, lbfgs.graph_status if lbfgs is not None else "off"),
    )


def graph_status(evaluation: str, lbfgs: str) -> str:
    """One word for the sidecar: a fallback of either graph, else the evaluation's state."""
    if lbfgs.startswith("fallback"):
        return f"fallback: L-BFGS step: {lbfgs.removeprefix('fallback: ')}"
    return evaluation
