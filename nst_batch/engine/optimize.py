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

    def __post_init__(self) -> None:
        if self.optimizer not in DEFAULT_LR:
            raise ConfigError(f"optimizer must be 'lbfgs' or 'adam', not {self.optimizer!r}")
        if self.steps < 1:
            raise ConfigError(f"steps must be at least 1, not {self.steps}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be positive, not {self.lr}")
        if self.history_size < 1:
            raise ConfigError(f"history_size must be at least 1, not {self.history_size}")

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


@dataclass
class OptimizeResult:
    image: Tensor  # (B, 3, H, W) in [0, 1], the best image evaluated
    loss: float  # its loss
    steps: int  # steps completed
    elapsed: float  # seconds
    interrupted: bool  # stopped by KeyboardInterrupt before all steps ran
    history: list[Progress] = field(default_factory=list)


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

    A KeyboardInterrupt (Ctrl-C) ends the loop early; the best image so far is returned with
    ``interrupted=True`` so the caller can still save it.
    """
    x = init.detach().clone().clamp_(0, 1).requires_grad_(True)
    optimizer = make_optimizer(x, config)
    best_image = x.detach().clone()
    best_loss = float("inf")
    last: list[Tensor] = []  # the latest evaluation's (total, content, style, tv)

    def closure() -> Tensor:
        nonlocal best_loss
        with torch.no_grad():
            x.clamp_(0, 1)  # project, so what we evaluate is a valid image
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
    start = time.perf_counter()
    interrupted = False
    try:
        for step in range(1, config.steps + 1):
            optimizer.step(closure)
            total, content, style, tv = last[0].tolist()
            progress = Progress(
                step, config.steps, total, content, style, tv, time.perf_counter() - start
            )
            history.append(progress)
            if callback is not None:
                callback(progress)
    except KeyboardInterrupt:
        interrupted = True
    return OptimizeResult(
        image=best_image,
        loss=best_loss,
        steps=len(history),
        elapsed=time.perf_counter() - start,
        interrupted=interrupted,
        history=history,
    )
