"""Where one optimization step's time goes on this CPU (the ``--profile`` part of benchmarks.step).

The real loop (``stylize_tensors``: default preset, one scale, Adam, so one forward and backward
per step) runs under ``torch.profiler`` with a schedule: the targets and the first
``WARMUP`` steps are left out, the next ``active`` steps are recorded. Reported per step:

- the top ops by self CPU time, and the ``aten::copy_`` calls (dtype and layout conversions);
- the convolutions' share of the step's wall time (forward and data-gradient convolutions: every
  op whose name has "convolution"), and their achieved GFLOP/s: the layer table's count
  (:func:`nst_batch.engine.vgg.conv_flops`, twice for the backward) over their self time;
- a measured peak to hold that against: the best of a few (2048, 2048) ``torch.mm`` in the
  step's dtype, on the same threads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

WARMUP = 2
MATMUL_EDGE = 2048


@dataclass(frozen=True)
class OpRow:
    name: str
    self_ms: float  # per step
    calls: float  # per step


@dataclass(frozen=True)
class StepProfile:
    size: tuple[int, int]  # (W, H)
    precision: str
    steps: int  # profiled
    step_s: float  # median wall seconds of the profiled steps (the profiler's overhead included)
    conv_s: float  # self seconds per step of the convolution ops
    conv_gflop: float  # per step: forward and data-gradient convolutions
    step_gflop: float  # per step: the convolutions and the Gram matrices (iteration_flops)
    copies: float  # aten::copy_ calls per step
    copy_ms: float
    matmul_gflops: float  # measured peak in the step's dtype
    top: tuple[OpRow, ...]


def matmul_peak(dtype: torch.dtype, edge: int = MATMUL_EDGE, repeats: int = 5) -> float:
    """GFLOP/s of the best of ``repeats`` (edge, edge) @ (edge, edge) products."""
    a, b = torch.randn(edge, edge).to(dtype), torch.randn(edge, edge).to(dtype)
    out = torch.empty(edge, edge, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up: the library picks its kernel
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * edge**3 / best / 1e9


def profile_step(
    content: torch.Tensor,  # (1, 3, H, W)
    style: torch.Tensor,  # (1, 3, h, w)
    loss: dict[str, Any],
    precision: str,
    active: int = 3,
    top: int = 12,
) -> StepProfile:
    from torch.profiler import ProfilerActivity, profile, schedule

    from nst_batch.engine.model import load_model
    from nst_batch.engine.vgg import LAYER_INDEX, conv_flops, iteration_flops
    from nst_batch.params import build_config
    from nst_batch.transfer import stylize_tensors

    h, w = content.shape[-2:]
    config = build_config(
        size=max(h, w), steps=WARMUP + active, scales=1, device="cpu", precision=precision,
        optimizer="adam", targets_backend="torch",
        **{k: tuple(map(tuple, v)) if k.endswith("layers") else v for k, v in loss.items()},
    )  # fmt: skip
    model, _ = load_model(config.model, config.loss.layers, torch.device("cpu"))
    stamps: list[float] = [0.0]
    plan = schedule(wait=0, warmup=WARMUP, active=active, repeat=1)
    with profile(activities=[ProfilerActivity.CPU], schedule=plan) as prof:

        def step_done(progress: Any) -> None:
            stamps.append(progress.elapsed)
            prof.step()

        stylize_tensors(content, style, config, model, step_done)
    events = prof.key_averages()
    per_step = [b - a for a, b in zip(stamps[WARMUP:], stamps[WARMUP + 1 :], strict=False)]
    conv_us = sum(e.self_cpu_time_total for e in events if "convolution" in e.key)
    copy = [e for e in events if e.key == "aten::copy_"]
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    deepest = max(config.loss.layers, key=lambda n: LAYER_INDEX[n])
    style_layers = [n for n, _ in config.loss.style_layers]
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return StepProfile(
        size=(w, h),
        precision=precision,
        steps=active,
        step_s=sorted(per_step)[len(per_step) // 2],
        conv_s=conv_us / 1e6 / active,
        conv_gflop=2 * conv_flops(deepest, h, w) / 1e9,
        step_gflop=iteration_flops(config.loss.layers, style_layers, h, w) / 1e9,
        copies=sum(e.count for e in copy) / active,
        copy_ms=sum(e.self_cpu_time_total for e in copy) / 1e3 / active,
        matmul_gflops=matmul_peak(dtype),
        top=tuple(
            OpRow(e.key, e.self_cpu_time_total / 1e3 / active, e.count / active) for e in rows
        ),
    )


def profile_section(report: Any, found: StepProfile) -> None:
    """Add one profile to a :class:`benchmarks.report.Report`."""
    w, h = found.size
    step_ms = 1e3 * found.step_s
    conv_rate = found.conv_gflop / found.conv_s if found.conv_s else 0.0
    report.add(
        "",
        f"## Where a {w}x{h} step's time goes ({found.precision}, Adam, {found.steps} steps "
        f"profiled after {WARMUP}, torch.profiler)",
        "",
        f"- step: {found.step_s:.3f} s wall (profiler overhead included); the whole step does "
        f"{found.step_gflop:.1f} GFLOP of convolutions and Gram matrices: "
        f"{found.step_gflop / found.step_s:.0f} GFLOP/s",
        f"- convolutions (forward and data gradient, {found.conv_gflop:.1f} GFLOP): "
        f"{1e3 * found.conv_s:.0f} ms, {100 * found.conv_s / found.step_s:.0f}% of the step; "
        f"{conv_rate:.0f} GFLOP/s = {100 * conv_rate / found.matmul_gflops:.0f}% of this CPU's "
        f"measured {found.precision} matmul peak ({found.matmul_gflops:.0f} GFLOP/s, "
        f"{MATMUL_EDGE}x{MATMUL_EDGE} torch.mm, best of 5)",
        f"- aten::copy_: {found.copies:.0f} calls per step, {found.copy_ms:.1f} ms",
        "",
        "| op | self ms / step | % of step | calls / step |",
        "|---|---|---|---|",
    )
    for row in found.top:
        report.add(
            f"| {row.name} | {row.self_ms:.1f} | {100 * row.self_ms / step_ms:.1f} "
            f"| {row.calls:.0f} |"
        )
