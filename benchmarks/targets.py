"""Style/content targets: torch vs ONNX Runtime for the forward passes taken before the loop.

    python -m benchmarks.targets [--sizes 256,512,1024] [--repeats 5] [--device cpu] [--out FILE.md]

Targets are one forward pass of the content image and one of each style image per pyramid level,
without gradients. Each size is timed interleaved (torch, onnx, torch, onnx, ...) so that machine
noise falls on both alike; the table gives medians. Also reported: the one-off costs of the ONNX
path (export into the cache, session creation).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.report import Report, cpu_name
from nst_batch.engine.losses import LossConfig
from nst_batch.engine.model import ModelConfig, load_model
from nst_batch.export import ExportConfig, OnnxFeatures, SessionConfig, export_onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="256,512,1024")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    layers = LossConfig().layers
    model, _ = load_model(ModelConfig(device=args.device), layers, device)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "targets.onnx"
        start = time.perf_counter()
        export_onnx(path, ExportConfig(layers=layers))
        export_s = time.perf_counter() - start
        start = time.perf_counter()
        provider = str(device) if device.type == "cuda" else "cpu"
        session = OnnxFeatures(path, SessionConfig(provider))
        session_s = time.perf_counter() - start
        name = torch.cuda.get_device_name() if device.type == "cuda" else cpu_name()
        report = Report(
            f"# Targets forward pass: torch vs ONNX Runtime ({device.type})",
            "",
            f"- machine: {platform.machine()} {name}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__}",
            f"- layers {', '.join(layers)}; one image (1, 3, H, W); median of {args.repeats}, "
            "interleaved",
            f"- one-off ONNX costs: export {export_s:.2f} s (cached afterwards), "
            f"session start {session_s:.2f} s",
            "",
            "| size (square) | torch ms | onnx ms | onnx / torch |",
            "|---|---|---|---|",
        )

        def torch_forward(x: torch.Tensor) -> None:
            with torch.no_grad():
                model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()

        def onnx_forward(x: torch.Tensor) -> None:
            session(x)

        for size in (int(s) for s in args.sizes.split(",")):
            x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
            xd = x.to(device)
            torch_forward(xd)  # warm-up: allocator, cuDNN/oneDNN algorithm choice
            onnx_forward(x)
            times: dict[str, list[float]] = {"torch": [], "onnx": []}
            for _ in range(args.repeats):
                for label, fn, inp in (("torch", torch_forward, xd), ("onnx", onnx_forward, x)):
                    start = time.perf_counter()
                    fn(inp)
                    times[label].append(time.perf_counter() - start)
            t, o = statistics.median(times["torch"]), statistics.median(times["onnx"])
            report.add(f"| {size} | {1e3 * t:.1f} | {1e3 * o:.1f} | {o / t:.2f} |")
    report.save(args.out)


if __name__ == "__main__":
    main()
