"""GPU engine: iterations/s by size, precision, CUDA graphs and batch; memory; achieved TFLOP/s.

    python -m benchmarks.gpu [--sizes 256,512,1024] [--precisions fp32,tf32,bf16]
        [--batches 1,4,16] [--graphs on,off] [--warmup 25] [--iters 100] [--big 2048]
        [--profile 512] [--device cuda] [--out benchmarks/results/gpu-h100.md] [--smoke]

Each row runs the real loop (:func:`nst_batch.transfer.stylize_batch_tensors`: default objective,
L-BFGS, bundled weights, one scale) on a square content and style from ../shared/images (the
built-in demo pictures when absent), B jobs at once. The loop reads losses back every ``warmup``
steps; the rate is taken between the first read (after warm-up and graph capture) and the last.
FLOPs per iteration come from the layer table (:func:`nst_batch.engine.vgg.iteration_flops`):
forward convolutions, their data-gradient convolutions, Gram matrices forward and backward.
"final loss" is job 0's loss after warmup + iters steps; "vs fp32" compares it with the fp32
row of the same size, batch and graphs setting (the quality cost of lower precision).
``--big`` adds single 1- and 2-step jobs at that size (does a 2048 px job fit?).
``--profile`` prints a torch.profiler summary of 20 eager bf16 steps at that size. The L-BFGS
share table times an L-BFGS step against an Adam step (one evaluation each) at each size.
``--smoke`` runs every part at toy sizes; on a machine without CUDA it runs on the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
from pathlib import Path

import torch

from benchmarks.report import Report, benchmark_pictures, cpu_name
from nst_batch.engine.model import load_model
from nst_batch.engine.vgg import iteration_flops
from nst_batch.images import to_tensor
from nst_batch.params import build_config
from nst_batch.transfer import stylize_batch_tensors

# Dense peak TFLOP/s by precision (NVIDIA data sheets; no sparsity). fp32 is the CUDA-core rate.
PEAKS: dict[str, dict[str, float]] = {
    "H100 PCIe": {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0},
    "H100 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.0},
    "H100": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4},  # SXM
    "H200": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4},
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0},
}


def peak_tflops(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAKS.items():  # most specific names first
        if key in name:
            return peaks[precision]
    return None


def memory(gib: float, device: torch.device) -> str:
    """Peak allocated GiB as a table cell: "-" off CUDA (the CPU has no allocator counter)."""
    return f"{gib:.2f}" if device.type == "cuda" else "-"


def pictures(size: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Square content and style (1, 3, size, size)."""
    content, style, label = benchmark_pictures()
    return to_tensor(content.resize((size, size))), to_tensor(style.resize((size, size))), label


@dataclasses.dataclass
class Row:
    size: int
    precision: str
    graphs: bool
    batch: int
    its: float  # iterations/s of the whole batch
    peak_gib: float
    gflop: float  # per iteration, whole batch
    final_loss: float


def measure(
    size: int,
    precision: str,
    graphs: bool,
    batch: int,
    warmup: int,
    iters: int,
    device: torch.device,
    optimizer: str = "lbfgs",
) -> Row:
    content, style, _ = pictures(size)
    config = build_config(
        size=size,
        scales=1,
        steps=warmup + iters,
        sync_every=warmup,
        precision=precision,
        cuda_graphs=graphs,
        device=str(device),
        targets_backend="torch",
        optimizer=optimizer,
    )
    model, _ = load_model(config.model, config.loss.layers, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    # (step, elapsed seconds) at each read-back from the device: every ``warmup`` steps on CUDA
    # (the last step of each chunk), every step on a CPU
    reads: list[tuple[int, float]] = []
    result = stylize_batch_tensors(
        [content] * batch,
        [[style]] * batch,
        [config] * batch,
        model,
        lambda p: reads.append((p.step, p.elapsed)) if p.image is not None else None,
    )
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    timed = [r for r in reads if r[0] >= warmup]  # after warm-up and graph capture
    its = (timed[-1][0] - timed[0][0]) / (timed[-1][1] - timed[0][1])
    style_layers = [n for n, _ in config.loss.style_layers]
    flop = batch * iteration_flops(config.loss.layers, style_layers, size, size)
    del model
    return Row(size, precision, graphs, batch, its, peak, flop / 1e9, result.losses[0])


def big_job(size: int, precision: str, device: torch.device) -> tuple[float, float]:
    """Peak GiB and s/iteration of one job at ``size`` (2 steps, no graphs: capture is moot)."""
    row = measure(size, precision, False, 1, 1, 1, device)
    return row.peak_gib, 1 / row.its


def lbfgs_share(report: Report, sizes: list[int], args: argparse.Namespace) -> None:
    """What L-BFGS adds to a step: its step against an Adam step (one evaluation each), batch 1,
    bf16, CUDA graphs as the run's first --graphs setting."""
    device, graphs = torch.device(args.device), args.graphs.split(",")[0] == "on"
    report.add(
        "",
        f"## The L-BFGS share of a step (batch 1, bf16, graphs {'on' if graphs else 'off'})",
        "",
        "| size | ms / Adam step | ms / L-BFGS step | L-BFGS share | L-BFGS / Adam |",
        "|---|---|---|---|---|",
    )
    for size in sizes:
        adam, lbfgs = (
            1e3 / measure(size, "bf16", graphs, 1, args.warmup, args.iters, device, opt).its
            for opt in ("adam", "lbfgs")
        )
        report.add(
            f"| {size} | {adam:.2f} | {lbfgs:.2f} | {100 * (1 - adam / lbfgs):.1f}% "
            f"| {lbfgs / adam:.2f} |"
        )


def profile(size: int, device: torch.device) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    content, style, _ = pictures(size)
    config = build_config(
        size=size, scales=1, steps=20, precision="bf16", cuda_graphs=False, device=str(device)
    )
    model, _ = load_model(config.model, config.loss.layers, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        stylize_batch_tensors([content], [[style]], [config], model)
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=48)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="256,512,1024")
    parser.add_argument("--precisions", default="fp32,tf32,bf16")
    parser.add_argument("--batches", default="1,4,16")
    parser.add_argument("--graphs", default="on,off")
    parser.add_argument("--warmup", type=int, default=25)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--max-batch-pixels", type=int, default=16 * 512 * 512,
                        help="skip size x batch combinations above this many pixels")  # fmt: skip
    parser.add_argument("--big", type=int, default=2048, help="0 to skip")
    parser.add_argument("--profile", type=int, default=512, help="0 to skip")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: runs end to end on CPU")
    args = parser.parse_args()
    if args.smoke:  # every section, in seconds
        args.sizes, args.precisions, args.batches, args.graphs = "64", "fp32,bf16", "1,2", "off"
        args.warmup, args.iters, args.big, args.profile = 2, 3, 96, 64
    device = torch.device(args.device)
    sizes = [int(s) for s in args.sizes.split(",")]
    precisions = args.precisions.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    graph_modes = [g == "on" for g in args.graphs.split(",")]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    _, _, label = pictures(16)
    report = Report(
        f"# GPU engine benchmark ({device.type})",
        "",
        f"- device: {name}; torch {torch.__version__}; python {platform.python_version()}; "
        f"{os.cpu_count()} CPUs",
        f"- default objective, L-BFGS (history 100), bundled VGG19, one scale, {label}; "
        f"{args.warmup} warm-up steps (graph capture included), then {args.iters} timed steps",
        "",
        "| size | precision | graphs | batch | it/s | jobs x it/s | ms/it | peak GiB "
        "| GFLOP/it | TFLOP/s | % of peak | final loss | vs fp32 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    )
    rows: list[Row] = []
    for size in sizes:
        for batch in batches:
            if size * size * batch > args.max_batch_pixels:
                continue
            for graphs in graph_modes:
                for precision in precisions:
                    try:
                        row = measure(
                            size, precision, graphs, batch, args.warmup, args.iters, device
                        )
                    except torch.cuda.OutOfMemoryError:
                        report.add(f"| {size} | {precision} | {graphs} | {batch} | OOM |")
                        continue
                    rows.append(row)
                    ref = next(
                        (
                            r
                            for r in rows
                            if (r.size, r.batch, r.graphs, r.precision)
                            == (size, batch, graphs, "fp32")
                        ),
                        None,
                    )
                    tflops = row.gflop * row.its / 1e3
                    peak = peak_tflops(device, precision)
                    share = f"{100 * tflops / peak:.1f}" if peak else "-"
                    delta = f"{100 * (row.final_loss / ref.final_loss - 1):+.2f}%" if ref else "-"
                    report.add(
                        f"| {size} | {precision} | {'on' if graphs else 'off'} | {batch} "
                        f"| {row.its:.1f} | {row.its * batch:.1f} | {1e3 / row.its:.2f} "
                        f"| {memory(row.peak_gib, device)} | {row.gflop:.1f} | {tflops:.1f} "
                        f"| {share} "
                        f"| {row.final_loss:.4g} | {delta} |"
                    )
    report.add("")
    for size in sizes:
        solo = [r for r in rows if r.size == size and r.batch == 1 and r.graphs]
        for r1 in solo:
            for rb in rows:
                if (rb.size, rb.precision, rb.graphs) == (
                    size,
                    r1.precision,
                    True,
                ) and rb.batch > 1:
                    report.add(
                        f"- {size} px {r1.precision}: batch {rb.batch} gives "
                        f"{rb.its * rb.batch / r1.its:.2f}x the jobs/s of batch 1"
                    )
    lbfgs_share(report, sizes, args)
    if args.big:
        report.add("", f"## One {args.big} px job", "", "| precision | peak GiB | s/it |",
                   "|---|---|---|")  # fmt: skip
        for precision in ("fp32", "bf16"):
            try:
                peak, seconds = big_job(args.big, precision, device)
                report.add(f"| {precision} | {memory(peak, device)} | {seconds:.3f} |")
            except torch.cuda.OutOfMemoryError:
                report.add(f"| {precision} | out of memory | - |")
    if args.profile:
        report.add(
            "",
            f"## Where the time goes: {args.profile} px, bf16, eager, 20 steps (torch.profiler)",
            "",
            "```",
            profile(args.profile, device),
            "```",
        )
    report.save(args.out)


if __name__ == "__main__":
    main()
