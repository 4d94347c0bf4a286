"""L-BFGS for a batch of independent problems: each image of a batch keeps its own history and step.

The algorithm is torch.optim.LBFGS's without line search (``max_iter=1``, ``tolerance_grad=0``,
``tolerance_change=0``, called once per step), applied to every image of the batch as if it were
alone: its own curvature pairs, its own ``H_diag`` scaling, its own first-step length
``min(1, 1 / |g|_1) * lr`` and its own "skip the step when d is not a descent direction" rule.
So a job optimized in a batch follows the same path as when run solo (``tests/test_batch.py``).

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

Nothing here reads a number back to the host, so a GPU never waits for it.
"""

from __future__ import annotations

import torch
from torch import Tensor


class BatchedLBFGS:
    """Minimise B independent objectives over the images of ``x`` (B, ...), updated in place.

    Call :meth:`step` with the gradient of each image's own loss at the current ``x``.
    """

    def __init__(self, x: Tensor, lr: float = 1.0, history_size: int = 100) -> None:
        self.x = x
        self.lr = lr
        self.m = history_size
        b, n = x.shape[0], x[0].numel()
        z = dict(device=x.device, dtype=x.dtype)
        self.s = torch.zeros(b, self.m, n, **z)  # (B, m, N) steps, in ring slots
        self.y = torch.zeros(b, self.m, n, **z)  # (B, m, N) gradient changes
        self.sy = torch.zeros(b, self.m, self.m, **z)  # (B, m, m) s_i^T y_j by slot
        self.yy = torch.zeros(b, self.m, self.m, **z)  # (B, m, m) y_i^T y_j by slot
        self.rho = torch.zeros(b, self.m, **z)  # (B, m) 1 / y^T s; 0 marks an empty slot
        # Newest slot per image: each image's ring advances only when it accepts a pair.
        self.newest = torch.full((b,), self.m - 1, device=x.device, dtype=torch.long)
        self.h_diag = torch.ones(b, **z)  # (B,)
        self.d = torch.zeros(b, n, **z)  # (B, N) the last direction
        self.t = torch.zeros(b, **z)  # (B,) the last step length
        self.g_prev = torch.zeros(b, n, **z)
        self.steps = 0  # steps taken, the same for every image: host bookkeeping only
        self._rows = torch.arange(b, device=x.device)
        self._slots = torch.arange(self.m, device=x.device)

    @torch.no_grad()
    def step(self, grad: Tensor) -> None:
        g = grad.reshape(self.d.shape)  # (B, N)
        if self.steps == 0:
            d = -g
            t = g.abs().sum(1).reciprocal().clamp(max=1.0) * self.lr
        else:
            # Slots written so far: only those take part (cheaper while the history fills).
            used = min(self.steps, self.m)
            self._remember(self.d * self.t[:, None], g - self.g_prev)
            d = self._direction(g, used)
            t = torch.full_like(self.t, self.lr)
        self.g_prev.copy_(g)
        self.d.copy_(d)
        self.t.copy_(t)
        descent = (g * d).sum(1) <= 0  # torch.optim.LBFGS breaks (no step) otherwise
        move = torch.where(descent, t, torch.zeros_like(t))
        self.x.view(self.d.shape).add_(d * move[:, None])
        self.steps += 1

    def _remember(self, s: Tensor, y: Tensor) -> None:
        """Store the pair (s, y) of each image whose curvature ``y^T s`` is positive."""
        ys = (y * s).sum(1)  # (B,)
        accept = ys > 1e-10
        slot = torch.where(accept, (self.newest + 1) % self.m, self.newest)  # (B,)
        r = self._rows
        keep = accept[:, None]
        self.s[r, slot] = torch.where(keep, s, self.s[r, slot])
        self.y[r, slot] = torch.where(keep, y, self.y[r, slot])
        self.rho[r, slot] = torch.where(accept, ys.reciprocal(), self.rho[r, slot])
        self.h_diag = torch.where(accept, ys / (y * y).sum(1), self.h_diag)
        self.newest = slot
        # The new pair's row and column of S^T Y and Y^T Y (the other slots are unchanged).
        y_new = torch.bmm(self.y, torch.stack([s, y], 2))  # (B, m, 2): y_j^T s, y_j^T y
        s_y = torch.bmm(self.s, y[:, :, None])[..., 0]  # (B, m): s_i^T y
        self.sy[r, slot] = torch.where(keep, y_new[..., 0], self.sy[r, slot])
        self.sy[r, :, slot] = torch.where(keep, s_y, self.sy[r, :, slot])
        self.yy[r, slot] = torch.where(keep, y_new[..., 1], self.yy[r, slot])
        self.yy[r, :, slot] = torch.where(keep, y_new[..., 1], self.yy[r, :, slot])

    def _direction(self, g: Tensor, used: int) -> Tensor:
        """The two-loop recursion in matrix form over the first ``used`` slots: d = -H g."""
        b = g.shape[0]
        s, y = self.s[:, :used], self.y[:, :used]  # (B, k, N)
        # Chronological order of the slots, oldest first; empty slots (rho 0) are inert anywhere.
        # While the ring fills, image i's pairs sit in slots 0..c_i-1 with newest = c_i - 1.
        order = (self.newest[:, None] + 1 + self._slots[None, :used]) % used  # (B, k)
        rho = self.rho[:, :used].gather(1, order)
        square = order[:, :, None].expand(b, used, used)

        def chrono(m: Tensor) -> Tensor:  # (B, k, k) by slot -> by age
            return m[:, :used, :used].gather(1, square).gather(2, square.transpose(1, 2))

        sy, yy = chrono(self.sy), chrono(self.yy)
        sg = torch.bmm(s, g[:, :, None])[..., 0].gather(1, order)  # (B, k) s_i^T g
        yg = torch.bmm(y, g[:, :, None])[..., 0].gather(1, order)
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
        # Back to slot order for the products with S and Y.
        alpha_slot = torch.zeros_like(alpha[..., 0]).scatter(1, order, alpha[..., 0])
        c_slot = torch.zeros_like(alpha_slot).scatter(1, order, (alpha - beta)[..., 0])
        r0 = self.h_diag[:, None] * (-g - torch.bmm(alpha_slot[:, None, :], y)[:, 0])
        return r0 + torch.bmm(c_slot[:, None, :], s)[:, 0]
