"""The optimization loop: pixels of a [0, 1] RGB image, L-BFGS or Adam.

The loop never prints or saves; it reports each step through a callback with a :class:`Progress`
and returns the best image it evaluated. Every evaluated image is first projected onto [0, 1], so
the returned image is exactly one whose loss was measured.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from nst_batch.engine.losses import LossTerms
from nst_batch.errors import ConfigError

OptimizerName = Literal["lbfgs", "adam"]
# Step sizes on the [0, 1] pixel scale. L-BFGS scales its own steps, so 1.0 is the usual choice;
# 0.02 for Adam moves a pixel by ~5 grey levels per step at first.
DEFAULT_LR: dict[str, float] = {"lbfgs": 1.0, "adam": 0.02}


@dataclass(frozen=True)
class OptimConfig:
    optimizer: OptimizerName = "lbfgs"
    steps: int = 300
    lr: float | None = None  # None: DEFAULT_LR of the optimizer
    history_size: int = 100  # L-BFGS curvature pairs kept
    ema: float = 0.0  # decay of an exponential moving average of the iterates; 0 = off
    max_seconds: float | None = None  # time budget for the loop
    tolerance: float = 0.0  # early stop: best loss improved by less than this fraction ...
    window: int = 50  # ... over this many steps; tolerance 0 = never

    def __post_init__(self) -> None:
        if self.optimizer not in DEFAULT_LR:
            raise ConfigError(f"optimizer must be 'lbfgs' or 'adam', not {self.optimizer!r}")
        if self.steps < 1:
            raise ConfigError(f"steps must be at least 1, not {self.steps}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be positive, not {self.lr}")
        if self.history_size < 1:
            raise ConfigError(f"history_size must be at least 1, not {self.history_size}")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"ema must be in [0, 1), not {self.ema}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ConfigError(f"max_seconds must be positive, not {self.max_seconds}")
        if self.tolerance < 0 or self.window < 1:
            raise ConfigError("tolerance must be >= 0 and window >= 1")

    @property
    def step_size(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]


@dataclass(frozen=True)
class Progress:
    """One optimizer step, as reported to the callback. Losses are the weighted terms."""

    step: int  # 1-based
    total: int
    loss: float
    content: float
    style: float
    tv: float
    elapsed: float  # seconds since the loop started
    # The iterate just evaluated, (B, 3, H, W); a live tensor: clone it to keep it.
    image: Tensor | None = field(default=None, repr=False, compare=False)
    scale: int = 0  # pyramid level (0 = coarsest) when optimizing coarse to fine


StopReason = Literal["steps", "converged", "time", "interrupted"]


@dataclass
class OptimizeResult:
    image: Tensor  # (B, 3, H, W) in [0, 1]: the best image evaluated, or the iterate average
    loss: float  # its loss
    steps: int  # steps completed
    elapsed: float  # seconds
    stop_reason: StopReason
    history: list[Progress] = field(default_factory=list)

    @property
    def interrupted(self) -> bool:
        return self.stop_reason == "interrupted"


def make_optimizer(x: Tensor, config: OptimConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam([x], lr=config.step_size)
    # One L-BFGS iteration per .step() so progress is reported each iteration; the optimizer keeps
    # its curvature history across calls. Tolerances at zero: we decide when to stop, not LBFGS.
    return torch.optim.LBFGS(
        [x],
        lr=config.step_size,
        max_iter=1,
        history_size=config.history_size,
        tolerance_grad=0.0,
        tolerance_change=0.0,
    )


def optimize(
    init: Tensor,
    loss_fn: Callable[[Tensor], LossTerms],
    config: OptimConfig,
    callback: Callable[[Progress], None] | None = None,
) -> OptimizeResult:
    """Minimise ``loss_fn`` over the pixels of ``init`` (B, 3, H, W), kept in [0, 1].

    Stops after ``config.steps``, on the time budget, on early convergence, or on KeyboardInterrupt
    (Ctrl-C); in every case the result holds the best image so far (or the iterate average when
    ``config.ema`` is set) so the caller can save it.
    """
    x = init.detach().clone().clamp_(0, 1).requires_grad_(True)
    optimizer = make_optimizer(x, config)
    best_image = x.detach().clone()
    current = x.detach().clone()  # the latest evaluated iterate, as reported in Progress
    average = x.detach().clone() if config.ema else None
    best_loss = float("inf")
    last: list[Tensor] = []  # the latest evaluation's (total, content, style, tv)

    def closure() -> Tensor:
        nonlocal best_loss
        with torch.no_grad():
            x.clamp_(0, 1)  # project, so what we evaluate is a valid image
            current.copy_(x)
            if average is not None:
                average.lerp_(current, 1 - config.ema)
        optimizer.zero_grad(set_to_none=False)
        terms = loss_fn(x)
        terms.total.backward()
        values = torch.stack([terms.total, terms.content, terms.style, terms.tv]).detach()
        loss = float(values[0])  # L-BFGS needs this number on the host anyway
        if loss < best_loss:
            best_loss = loss
            best_image.copy_(x.detach())
        last[:] = [values]
        return terms.total

    history: list[Progress] = []
    best_so_far: list[float] = []  # best loss after each step, for the convergence window
    start = time.perf_counter()
    reason: StopReason = "steps"
    try:
        for step in range(1, config.steps + 1):
            optimizer.step(closure)
            total, content, style, tv = last[0].tolist()
            elapsed = time.perf_counter() - start
            progress = Progress(step, config.steps, total, content, style, tv, elapsed, current)
            history.append(progress)
            best_so_far.append(best_loss)
            if callback is not None:
                callback(progress)
            if config.max_seconds is not None and elapsed >= config.max_seconds:
                reason = "time"
                break
            if config.tolerance and step > config.window:
                before = best_so_far[-1 - config.window]
                if before - best_loss < config.tolerance * abs(before):
                    reason = "converged"
                    break
    except KeyboardInterrupt:
        reason = "interrupted"
    image, loss = best_image, best_loss
    if average is not None and history:
        with torch.no_grad():
            image, loss = average, float(loss_fn(average).total)
    return OptimizeResult(
        image=image,
        loss=loss,
        steps=len(history),
        elapsed=time.perf_counter() - start,
        stop_reason=reason,
        history=history,
    )
