"""Peak memory against image size, tiled and untiled, next to the engine's estimate.

    python -m benchmarks.memory [--sizes 256,512,1024] [--tiles 0,256] [--steps 2]
        [--precision bf16] [--big 4032 --max-memory 6 --big-steps 3] [--overhead 1024]
        [--out benchmarks/results]

Each case runs in a fresh process (``--child``): the model is loaded, the peak-RSS counter of
the kernel is reset (``/proc/self/clear_refs``), then one real job runs (``nst_batch.stylize``
on generated pictures: decode, targets, the pyramid, save). The job's memory is the peak resident
set (VmHWM) less the resident set before it (interpreter, libraries, weights); on CUDA the peak
allocated by torch. Writes ``memory-cpu.md`` (or ``memory-cuda.md``).

``--big`` runs a print-size job (4032x3024 is a 12-megapixel phone photo) with ``--max-memory``
and checks that the whole process stayed under the budget; ``--overhead`` times the tiled and
the untiled step at one size, interleaved, for the cost of tiling.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.report import Report, cpu_name

ROOT = Path(__file__).resolve().parents[1]


def _status(field: str) -> int:
    """A VmRSS/VmHWM-style line of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(args: argparse.Namespace) -> None:
    """One job in this process; prints a JSON line with the measurements."""
    from nst_batch import build_config, stylize
    from nst_batch.demo import content_photo, swirl_painting
    from nst_batch.engine.model import resolve_device
    from nst_batch.images import resize_long_edge
    from nst_batch.pool import ModelPool

    overrides = dict(size=args.size, steps=args.steps, precision=args.precision)
    if args.tile:
        overrides["tile"] = args.tile
    if args.max_memory:
        overrides["max_memory"] = args.max_memory
    if args.scales:
        overrides["scales"] = args.scales
    if args.scale_steps:
        overrides["scale_steps"] = args.scale_steps
    config = build_config("default", **overrides)
    device = resolve_device(config.model.device)
    with tempfile.TemporaryDirectory() as tmp:
        content, style, output = Path(tmp, "c.png"), Path(tmp, "s.png"), Path(tmp, "out.png")
        resize_long_edge(content_photo(), args.size).save(content)
        swirl_painting(512, seed=1, strokes=800).save(style)
        models = ModelPool()
        models.get(config.model, config.loss.layers, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            load_peak = before
        else:
            load_peak = _status("VmHWM")  # loading the weights, before the counter is reset
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            before = _status("VmRSS")
        start = time.perf_counter()
        result = stylize(content, [style], output, config, models=models)
        wall = time.perf_counter() - start
        peak = (
            torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _status("VmHWM")
        )
        if args.keep:
            args.keep.write_bytes(output.read_bytes())
    plan = result.sidecar.memory
    assert plan is not None
    record = {
        "size": list(result.sidecar.output["size"]),
        "before": before,
        "peak": peak,
        "job": peak - before,
        "estimate": plan.estimate_gb * 1e9,
        "plan": plan.describe(),
        "tile": plan.tile,
        "wall": wall,
        "device": device.type,
        "precision": result.sidecar.precision,
        "steps": result.sidecar.steps_completed,
        "levels": [(level.long_edge, level.steps) for level in result.sidecar.pyramid],
        "final_loss": result.sidecar.final_loss.total,
        "process_peak": max(load_peak, peak),  # the whole process, from its start
    }
    print("RESULT " + json.dumps(record), flush=True)


def measure(
    size: int,
    tile: int = 0,
    steps: int = 2,
    precision: str = "bf16",
    max_memory: float = 0.0,
    scales: int = 1,
    scale_steps: int = 0,
    keep: Path | None = None,
) -> dict[str, object]:
    """Run one case in a fresh process and return its measurements."""
    command = [sys.executable, "-m", "benchmarks.memory", "--child", "--size", str(size)]
    command += ["--tile", str(tile), "--steps", str(steps), "--precision", precision]
    command += ["--max-memory", str(max_memory), "--scales", str(scales)]
    command += ["--scale-steps", str(scale_steps)] + (["--keep", str(keep)] if keep else [])
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"case {size} px tile {tile} failed:\n{done.stdout}\n{done.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--tile", type=int, default=0)
    parser.add_argument("--scales", type=int, default=1, help="pyramid levels (0: auto)")
    parser.add_argument("--scale-steps", type=int, default=0, help="steps at coarser levels")
    parser.add_argument("--keep", type=Path, help="save the output here (the --big job's)")
    parser.add_argument("--max-memory", type=float, default=0.0)
    parser.add_argument("--sizes", default="256,512,1024")
    parser.add_argument("--tiles", default="0,256")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--big", type=int, default=0, help="long edge of a print-size job")
    parser.add_argument("--big-steps", type=int, default=3)
    parser.add_argument(
        "--big-log", type=Path, help="report a finished --big child's output instead of rerunning"
    )
    parser.add_argument("--overhead", type=int, default=0, help="time tiling at this size")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--append", action="store_true", help="add to the results file (the --big part later)"
    )
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    kind = "cuda" if torch.cuda.is_available() else "cpu"
    header = [
        f"# Peak memory against size, tiled and untiled ({kind})",
        "",
        f"- {cpu_name()}, torch {torch.__version__}, {args.precision}, default preset "
        f"(relu1_1..relu5_1 + relu4_2), L-BFGS history 100, {args.steps} steps, one scale",
        "- job = peak resident set less the resident set before the job (interpreter, "
        "libraries, weights); estimate = nst_batch.engine.memory",
        "",
    ]
    table = [
        "| size | tiles | job GB | estimate GB | estimate / job | process peak GB | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    report = Report(*header, *(table if args.sizes else []))
    for size in (int(s) for s in args.sizes.split(",") if s):
        for tile in (int(t) for t in args.tiles.split(",")):
            if tile and tile >= size:
                continue
            r = measure(size, tile, args.steps, args.precision)
            w, h = r["size"]  # type: ignore[misc]
            report.add(
                f"| {w}x{h} | {tile or 'none'} | {r['job'] / 1e9:.2f} | "  # type: ignore[operator]
                f"{r['estimate'] / 1e9:.2f} | {r['estimate'] / r['job']:.2f} | "  # type: ignore[operator]
                f"{r['peak'] / 1e9:.2f} | {r['wall']:.0f} |"  # type: ignore[operator]
            )
    if args.big:
        big(report, args)
    if args.overhead:
        overhead(report, args.overhead, args.precision)
    path = args.out / f"memory-{kind}.md"
    if args.append and path.is_file():
        report.lines = [*path.read_text().splitlines(), *report.lines[len(header) :]]
    report.save(path)


def big(report: Report, args: argparse.Namespace) -> None:
    """The print-size job: the pyramid up to ``--big`` px within ``--max-memory``."""
    keep = args.out / f"memory-{args.big}.png"
    if args.big_log:  # a child run by hand (hours on a CPU): its RESULT line
        lines = args.big_log.read_text().splitlines()
        r = json.loads(next(x for x in lines if x.startswith("RESULT "))[len("RESULT ") :])
    else:
        r = measure(
            args.big, 0, args.big_steps, args.precision, args.max_memory, 0, args.scale_steps, keep
        )
    w, h = r["size"]  # type: ignore[misc]
    peak = float(r["process_peak"]) / 1e9  # type: ignore[arg-type]
    verdict = "under" if peak < args.max_memory else "OVER"
    report.add(
        "",
        f"## A {w}x{h} job with --max-memory {args.max_memory:g}",
        "",
        f"- levels (long edge, steps): {r['levels']}; final level: {r['plan']}",
        f"- whole-process peak resident set {peak:.2f} GB ({verdict} the budget); the job's own "
        f"{float(r['job']) / 1e9:.2f} GB (estimate {float(r['estimate']) / 1e9:.2f} GB); "  # type: ignore[arg-type]
        f"wall {float(r['wall']) / 60:.1f} min; output: {keep.name}",  # type: ignore[arg-type]
    )


def overhead(report: Report, size: int, precision: str, repeats: int = 5) -> None:
    """Seconds per evaluation (loss and gradient) tiled and untiled at one size, interleaved."""
    import statistics

    from nst_batch import build_config
    from nst_batch.demo import content_photo, swirl_painting
    from nst_batch.engine.graphs import features_at, precision_context
    from nst_batch.engine.losses import compute_targets, objective_weights, weighted_terms
    from nst_batch.engine.model import load_model
    from nst_batch.engine.optimize import autograd_gradient
    from nst_batch.engine.tiled import TiledObjective
    from nst_batch.images import resize_long_edge, to_tensor

    config = build_config("default", size=size, precision=precision)
    device = torch.device("cpu")
    model, _ = load_model(config.model, config.loss.layers, device)
    features = features_at(model, precision)  # type: ignore[arg-type]
    content = to_tensor(resize_long_edge(content_photo(), size))
    style = to_tensor(swirl_painting(size, seed=1, strokes=800))
    with torch.no_grad(), precision_context(precision, device):  # type: ignore[arg-type]
        targets = compute_targets(features(content), features(style), config.loss)
    weights = objective_weights([config.loss])
    ways = {
        "untiled": autograd_gradient(lambda x: weighted_terms(x, features(x), targets, weights))
    }
    for tile in (768, 512, 256):
        ways[f"tiles of {tile}"] = TiledObjective(features, targets, weights, tile)
    times: dict[str, list[float]] = {name: [] for name in ways}
    with precision_context(precision, device):  # type: ignore[arg-type]
        for _ in range(repeats):
            for name, way in ways.items():
                start = time.perf_counter()
                way(content)
                times[name].append(time.perf_counter() - start)
    h, w = content.shape[-2:]
    base = statistics.median(times["untiled"])
    report.add(
        "",
        f"## Cost of tiling at {w}x{h} ({precision}, median of {repeats}, interleaved)",
        "",
        "| evaluation | s | vs untiled |",
        "|---|---|---|",
    )
    for name, values in times.items():
        median = statistics.median(values)
        report.add(f"| {name} | {median:.2f} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
