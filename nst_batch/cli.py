"""The ``nst-batch`` command line: parse, build a config, call one library function, map errors."""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from nst_batch.config import OutputConfig, StylizeConfig
from nst_batch.engine.model import ModelConfig
from nst_batch.engine.optimize import Progress as Step
from nst_batch.errors import ConfigError, NstError
from nst_batch.export.model import DEFAULT_LAYERS as DEFAULT_EXPORT_LAYERS
from nst_batch.jobs.run import StylizeResult
from nst_batch.jobs.sidecar import sidecar_path
from nst_batch.params import PRESETS, build_config, parse_floats, parse_layers
from nst_batch.version import __version__

if TYPE_CHECKING:
    from rich.table import Table

    from nst_batch.manifest import JobOutcome, Plan, PlannedJob, Report, RunCallbacks

app = typer.Typer(
    name="nst-batch",
    help="Neural style transfer (Gatys et al.) with real VGG19 weights.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM; the shell's convention for SIGINT
_T = TypeVar("_T")
LOG_SECONDS = 5.0  # off a terminal, a progress line at least this often (besides every N steps)


class OptimizerChoice(str, Enum):
    lbfgs = "lbfgs"
    adam = "adam"


class LineSearchChoice(str, Enum):
    reject = "reject"
    backtrack = "backtrack"
    none = "none"


LINE_SEARCH_HELP = (
    "L-BFGS safeguard per image: reject (undo a step that more than doubles the loss), "
    "backtrack (Armijo line search) or none (torch's plain L-BFGS) (default: backtrack)."
)


class PoolingChoice(str, Enum):
    max = "max"
    avg = "avg"


class EnginePrecision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    tf32 = "tf32"
    bf16 = "bf16"


class TargetsBackend(str, Enum):
    auto = "auto"
    torch = "torch"
    onnx = "onnx"


class Provider(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    tensorrt = "tensorrt"


class PrecisionChoice(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


def _table_console(stderr: bool = False) -> Console:
    """A console for tables: the terminal's width on a terminal; unlimited in a pipe or a log,
    so paths are printed whole rather than cut at 80 columns."""
    console = Console(stderr=stderr, highlight=False)
    return console if console.is_terminal else Console(stderr=stderr, highlight=False, width=10**4)


def _fail(message: str, code: int = 1) -> typer.Exit:
    _stderr().print(f"[bold red]error:[/] {message}", soft_wrap=True)
    return typer.Exit(code)


def _at(p: Step) -> str:
    """ " @256x192" for the pyramid level being optimized."""
    return f" @{p.image.shape[-1]}x{p.image.shape[-2]}" if p.image is not None else ""


def _step_line(p: Step) -> str:
    """One optimizer step as a plain log line (for logs, CI and containers)."""
    return (
        f"step {p.step}/{p.total}{_at(p)} loss={p.loss:.4g} content={p.content:.4g} "
        f"style={p.style:.4g} tv={p.tv:.4g} elapsed={p.elapsed:.1f}s"
    )


def log_due(
    parts: int, seconds: float = LOG_SECONDS, clock: Callable[[], float] = time.monotonic
) -> Callable[[Step], bool]:
    """When a plain progress line is due: the first and last step, every 1/``parts`` of the
    steps, and whenever ``seconds`` passed since the last line (slow steps, short budgets)."""
    last = -math.inf

    def due(p: Step) -> bool:
        nonlocal last
        now = clock()
        if p.step in (1, p.total) or p.step % max(1, p.total // parts) == 0:
            last = now
            return True
        if now - last >= seconds:
            last = now
            return True
        return False

    return due


@contextmanager
def _progress_reporter(label: str) -> Iterator[Callable[[Step], None]]:
    """A rich bar on a terminal; plain log lines (:func:`log_due`) otherwise."""
    console = _stderr()
    if not console.is_terminal:
        due = log_due(20)

        def log(p: Step) -> None:
            if due(p):
                print(_step_line(p), file=sys.stderr, flush=True)

        yield log
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[losses]}"),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(label, total=None, losses="loading")

        def update(p: Step) -> None:
            losses = f"{_at(p)} loss {p.loss:.4g} (c {p.content:.3g} s {p.style:.3g} tv {p.tv:.3g})"
            bar.update(task, completed=p.step, total=p.total, losses=losses)

        yield update


def _report(result: StylizeResult, output: Path) -> None:
    meta = result.metadata
    verb = "interrupted; saved best image so far to" if result.interrupted else "wrote"
    final = meta["pyramid"][-1]["seconds_per_iteration"] or 0.0
    why = {"time": ", time budget spent", "converged": ", converged"}.get(meta["stop_reason"], "")
    _stderr().print(
        f"{verb} {output} ({meta['steps_completed']} steps{why}; {final:.3f} s/it at "
        f"{meta['pyramid'][-1]['long_edge']} px on {meta['device']}, {meta['precision']}) "
        f"and {sidecar_path(output)}",
        soft_wrap=True,
    )
    if not meta["converged"]:
        _stderr().print(
            f"[bold yellow]warning:[/] {output}: the optimization failed: {meta['convergence']}",
            soft_wrap=True,
        )


def _run_stylize(
    content: Path,
    styles: list[Path],
    output: Path,
    config: StylizeConfig,
    outputs: OutputConfig | None = None,
    check_onnx: Path | None = None,
) -> None:
    from nst_batch.jobs.run import stylize
    from nst_batch.pool import ModelPool

    try:
        models = ModelPool(check_onnx)
        with _sigterm_as_ctrl_c(), _progress_reporter(output.name) as report:
            result = stylize(content, styles, output, config, report, outputs, models)
    except NstError as err:
        raise _fail(str(err)) from None
    except KeyboardInterrupt:
        raise _fail("interrupted before optimization started; nothing written", 130) from None
    _report(result, output)
    if result.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)


def _version(value: bool) -> None:
    if value:
        print(f"nst-batch {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Neural style transfer (Gatys et al.) with real VGG19 weights."""


class Reconstruct(str, Enum):
    content = "content"
    style = "style"


# The default preset's values, shown in --help (a --preset changes them; flags override both).
_D = build_config()
_FLAG = ""  # metavar of an on/off flag: nothing after the name


def _default(value: object, note: str = "") -> str:
    return f" (default: {value}{'; ' + note if note else ''})"


def _alias(name: str, value: _T, alias: _T | None) -> _T:
    """A flag's value, or its hidden alias's (the spelling users of neural-style type)."""
    if alias is None or alias is False:
        return value
    if value is not None and value is not False and value != alias:
        raise _fail(f"{name} and its alias disagree ({value!r} vs {alias!r})", 2)
    return alias


@app.command("stylize")
def stylize_command(
    content: Path = typer.Argument(
        ..., metavar="CONTENT", help="Content image (any format Pillow reads)."
    ),
    style: Path | None = typer.Argument(
        None, metavar="STYLE", help="Style image (or give --style, repeatable)."
    ),
    output: Path = typer.Option(
        ..., "--output", "-o", metavar="OUT", help="Output image: .png, .jpg or .webp."
    ),
    styles: list[Path] | None = typer.Option(
        None, "--style", metavar="PATH", help="A style image; repeat to blend several."
    ),
    style_blend: str | None = typer.Option(
        None,
        metavar="W,W,...",
        help="Blend weights of the style images, e.g. 0.7,0.3" + _default("equal"),
    ),
    style_scale: float | None = typer.Option(
        None,
        metavar="X",
        help="Style image size relative to the output (0.5 = finer brush "
        "strokes)" + _default(_D.style_scale),
    ),
    preserve_colors: bool = typer.Option(
        False,
        "--preserve-colors",
        metavar=_FLAG,
        help="Keep the content's colours (stylized luminance only).",
    ),
    preset: str = typer.Option(
        "default", metavar="NAME", help="Recipe to start from: see `nst-batch presets`."
    ),
    size: int | None = typer.Option(
        None, metavar="PX", help="Long edge of the output in pixels" + _default(_D.size)
    ),
    steps: int | None = typer.Option(
        None,
        metavar="N",
        help="Iterations at the final scale" + _default(_D.optim.steps, "presets change it"),
    ),
    optimizer: OptimizerChoice | None = typer.Option(
        None, help="The optimizer" + _default(_D.optim.optimizer)
    ),
    lr: float | None = typer.Option(
        None, metavar="LR", help="Step size (default: 1.0 for lbfgs, 0.02 for adam)."
    ),
    content_weight: float | None = typer.Option(
        None, metavar="W", help="Weight of content" + _default(f"{_D.loss.content_weight:g}")
    ),
    style_weight: float | None = typer.Option(
        None,
        metavar="W",
        help="Weight of style, higher = more style" + _default(f"{_D.loss.style_weight:g}"),
    ),
    tv_weight: float | None = typer.Option(
        None,
        metavar="W",
        help="Weight of total variation (smoothness)" + _default(f"{_D.loss.tv_weight:g}"),
    ),
    content_layers: str | None = typer.Option(
        None,
        metavar="LAYERS",
        help="Content layers with optional weights, e.g. relu4_2 or relu3_1:0.5,relu4_2"
        + _default(",".join(n for n, _ in _D.loss.content_layers)),
    ),
    style_layers: str | None = typer.Option(
        None,
        metavar="LAYERS",
        help="Style layers with weights, e.g. relu1_1:0.5,relu3_1:0.5"
        + _default("relu1_1..relu5_1 weighted 256:64:16:4:1"),
    ),
    init: str | None = typer.Option(
        None,
        metavar="content|noise|PATH",
        help="Start image: content, noise (or random) or an image file" + _default(_D.init),
    ),
    seed: int | None = typer.Option(
        None, metavar="N", help="Seed for noise init; same seed, same CPU result" + _default(0)
    ),
    scales: int | None = typer.Option(
        None,
        metavar="N",
        help="Coarse-to-fine levels, 1 = off (default: automatic, on from 384 px).",
    ),
    scale_steps: int | None = typer.Option(
        None, metavar="N", help="Iterations at each coarser scale (default: half of --steps)."
    ),
    ema: float | None = typer.Option(
        None, metavar="DECAY", help="Average the iterates with this decay, e.g. 0.9 (default: off)."
    ),
    max_seconds: float | None = typer.Option(
        None,
        metavar="S",
        help="Time budget for the optimization, split over the pyramid levels (see README).",
    ),
    tolerance: float | None = typer.Option(
        None,
        metavar="FRACTION",
        help="Stop early when the loss improves less than this fraction over --window.",
    ),
    window: int | None = typer.Option(
        None,
        metavar="N",
        help="Steps over which --tolerance is judged" + _default(_D.optim.window),
    ),
    save_every: int = typer.Option(
        0,
        metavar="N",
        show_default=False,
        help="Also save every N-th iterate beside OUT, same format: out.0050.png (default: off).",
    ),
    line_search: LineSearchChoice | None = typer.Option(None, help=LINE_SEARCH_HELP),
    sheet: bool = typer.Option(
        False,
        "--sheet",
        metavar=_FLAG,
        help="Also write OUT.sheet.png (inputs | result) and OUT.loss.png.",
    ),
    reconstruct: Reconstruct | None = typer.Option(
        None, help="content: content-only from noise (no style needed); style: style-only."
    ),
    device: str | None = typer.Option(
        None, metavar="auto|cpu|cuda[:N]|mps", help="Where to compute" + _default(_D.model.device)
    ),
    weights: str | None = typer.Option(
        None,
        metavar="bundled|torchvision|PATH",
        help="VGG19 weights: bundled (original, offline), torchvision, or a .pth/.safetensors "
        "file" + _default(_D.model.weights),
    ),
    pooling: PoolingChoice | None = typer.Option(
        None, help="Pooling layers" + _default(_D.model.pooling, "gatys preset: avg")
    ),
    max_pixels: int | None = typer.Option(
        None,
        metavar="N",
        help="Refuse input images with more pixels, a guard against decompression bombs; "
        "raise it for large camera files (default: Pillow's 89478485).",
    ),
    targets_backend: TargetsBackend | None = typer.Option(
        None, help="Compute style/content targets in torch or ONNX Runtime (default: auto)."
    ),
    check_onnx: Path | None = typer.Option(
        None,
        metavar="MODEL.onnx",
        help="An `nst-batch export`: check the engine's features against it first.",
    ),
    precision: EnginePrecision | None = typer.Option(
        None,
        help="auto (bf16 where the hardware has it, else fp32), fp32, tf32 (CUDA convolutions) "
        "or bf16 (autocast; Gram matrices and losses stay fp32)" + _default("auto"),
    ),
    cuda_graphs: bool | None = typer.Option(
        None,
        "--cuda-graphs/--no-cuda-graphs",
        metavar=_FLAG,
        help="Replay each step as a CUDA graph (default: on).",
    ),
    # Hidden aliases: the names users of neural-style and its ports type.
    num_steps: int | None = typer.Option(None, "--num-steps", hidden=True),
    original_colors: bool = typer.Option(
        False, "--original-colors", "--preserve-color", hidden=True
    ),
    style_blend_weights: str | None = typer.Option(None, "--style-blend-weights", hidden=True),
) -> None:
    """Stylize CONTENT with the look of STYLE; writes OUTPUT and OUTPUT.json (all parameters)."""
    style_list = ([style] if style else []) + list(styles or [])
    steps = _alias("--steps", steps, num_steps)
    preserve_colors = _alias("--preserve-colors", preserve_colors, original_colors)
    style_blend = _alias("--style-blend", style_blend, style_blend_weights)
    try:
        overrides = {
            "size": size,
            "steps": steps,
            "optimizer": optimizer.value if optimizer else None,
            "lr": lr,
            "content_weight": content_weight,
            "style_weight": style_weight,
            "tv_weight": tv_weight,
            "content_layers": parse_layers(content_layers) if content_layers else None,
            "style_layers": parse_layers(style_layers) if style_layers else None,
            "init": init,
            "seed": seed,
            "style_blend": parse_floats(style_blend) if style_blend else None,
            "style_scale": style_scale,
            "preserve_colors": preserve_colors or None,
            "scales": scales,
            "scale_steps": scale_steps,
            "ema": ema,
            "max_seconds": max_seconds,
            "tolerance": tolerance,
            "window": window,
            "line_search": line_search.value if line_search else None,
            "device": device,
            "weights": weights,
            "pooling": pooling.value if pooling else None,
            "targets_backend": targets_backend.value if targets_backend else None,
            "precision": precision.value if precision else None,
            "cuda_graphs": cuda_graphs,
            "max_pixels": max_pixels,
        }
        if reconstruct is not None:
            # Reconstruction from white noise, as in the paper's Fig. 1.
            overrides["init"] = init or "noise"
            overrides["content_weight" if reconstruct == "style" else "style_weight"] = 0.0
            if reconstruct == "content" and not style_list:
                style_list = [content]  # unused at weight 0; only its presence is checked
        config = build_config(preset, **overrides)
        outputs = OutputConfig(save_every=save_every, sheet=sheet)
    except NstError as err:
        raise _fail(str(err)) from None
    if not style_list:
        raise _fail("give a STYLE image (or --style PATH)", 2)
    _run_stylize(content, style_list, output, config, outputs, check_onnx)


@app.command("presets")
def presets_command() -> None:
    """List the named recipes (use with --preset)."""
    from rich.table import Table

    table = Table("preset", "what it is", "steps", "init", show_lines=True)
    for p in PRESETS.values():
        table.add_row(p.name, p.description, str(p.optim.steps), p.init)
    Console().print(table)


@app.command("features")
def features_command(
    image: Path = typer.Argument(..., help="Image to look at."),
    output: Path = typer.Option(..., "--output", "-o", help="Grid image to write (.png)."),
    layers: str = typer.Option(
        "relu1_1,relu2_1,relu3_1,relu4_1,relu5_1", help="Layers, one row each."
    ),
    channels: int = typer.Option(8, help="Most active feature maps shown per layer."),
    size: int = typer.Option(256, help="Long edge the image is analysed at."),
    weights: str = typer.Option("bundled", help="bundled, torchvision or a path."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
) -> None:
    """Draw the feature maps of chosen VGG19 layers for IMAGE, one row per layer."""
    from nst_batch.engine.model import load_model, resolve_device
    from nst_batch.features import feature_grid
    from nst_batch.images import check_output_path, load_image, save_pil

    try:
        names = tuple(name for name, _ in parse_layers(layers))
        if not 1 <= channels <= 64:
            raise ConfigError("channels must be between 1 and 64")
        check_output_path(output)
        picture = load_image(image, size)
        torch_device = resolve_device(device)
        model, _ = load_model(ModelConfig(weights=weights), names, torch_device)
        save_pil(feature_grid(picture.to(torch_device), model, names, channels), output)
    except NstError as err:
        raise _fail(str(err)) from None
    _stderr().print(f"wrote {output} ({len(names)} layers x {channels} feature maps)")


@app.command("demo")
def demo_command(
    output_dir: Path = typer.Option(Path("demo-output"), "--output-dir", "-o", help="Folder."),
    size: int = typer.Option(256, help="Long edge of the output (256 takes ~2 min on 2 cores)."),
    steps: int = typer.Option(200, help="L-BFGS iterations."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
) -> None:
    """Stylize a built-in photo with a built-in painting (no downloads)."""
    from nst_batch.demo import content_photo, swirl_painting
    from nst_batch.images import save_image, to_tensor

    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        content_path, style_path = output_dir / "content.png", output_dir / "style.png"
        save_image(to_tensor(content_photo()), content_path)
        save_image(to_tensor(swirl_painting()), style_path)
        config = build_config(size=size, steps=steps, device=device)
    except NstError as err:
        raise _fail(str(err)) from None
    _stderr().print(f"inputs: {content_path} + {style_path}")
    outputs = OutputConfig(sheet=True)
    _run_stylize(content_path, [style_path], output_dir / "stylized.png", config, outputs)


@app.command("weights")
def weights_command(
    weights: str = typer.Option(
        "bundled", help="bundled, torchvision, or a .pth/.safetensors path."
    ),
) -> None:
    """Load (download, decode, cache) a weights source now and print what it is."""
    from nst_batch.engine.weights import default_cache_dir, load_weights, resolve_source

    try:
        loaded = load_weights(resolve_source(weights))
    except NstError as err:
        raise _fail(str(err)) from None
    print(f"source:        {loaded.source.name}")
    print(f"sha256:        {loaded.sha256}")
    print(f"preprocessing: {loaded.source.preprocessing}")
    print(f"conv layers:   {sum(k.endswith('.weight') for k in loaded.state)}")
    if loaded.source.kind == "bundled":
        print(f"decoded cache: {default_cache_dir()}")


@app.command("export")
def export_command(
    output: Path = typer.Option(
        Path("vgg19_features.onnx"), "--output", "-o", help="Model file (.onnx; + .onnx.data)."
    ),
    layers: str = typer.Option(
        ",".join(DEFAULT_EXPORT_LAYERS), help="Output layers; the stack ends at the deepest."
    ),
    weights: str = typer.Option(
        "bundled", help="bundled, torchvision or a .pth/.safetensors path."
    ),
    pooling: PoolingChoice = typer.Option(PoolingChoice.max, help="max or avg pooling."),
    opset: int = typer.Option(17, help="ONNX opset version."),
) -> None:
    """Export the truncated VGG19 feature stack to ONNX (input `image`, one output per layer)."""
    from nst_batch.export import ExportConfig, export_onnx

    try:
        names = tuple(name for name, _ in parse_layers(layers))
        info = export_onnx(output, ExportConfig(names, weights, pooling.value, opset))
    except NstError as err:
        raise _fail(str(err)) from None
    print(f"wrote {output} and {output}.data (onnx.checker passed)")
    print(f"layers:   {', '.join(info.layers)}")
    print(f"weights:  {info.weights_source} (sha256 {info.weights_sha256[:16]}...)")
    print(f"input:    image float32 (N, 3, H, W), RGB in [0, 1]; N, H, W dynamic; opset {opset}")


@app.command("verify")
def verify_command(
    model: Path = typer.Argument(..., help="An ONNX model made by `nst-batch export`."),
    providers: Provider = typer.Option(Provider.auto, help="ONNX Runtime execution provider."),
    precision: PrecisionChoice = typer.Option(
        PrecisionChoice.auto, help="fp16 is TensorRT only; auto: fp16 on TensorRT, else fp32."
    ),
    sizes: str = typer.Option("64,256,517x311", help="Input sizes: N (square) or WxH."),
    images: list[Path] | None = typer.Option(
        None, "--image", help="Also compare on this picture (repeatable)."
    ),
    weights: str | None = typer.Option(
        None, help="The engine's weights to compare with (default: the source the export records)."
    ),
    trt_cache: Path | None = typer.Option(
        None, help="TensorRT engine cache folder (default: MODEL's folder/<name>.trt-cache)."
    ),
) -> None:
    """Compare ONNX Runtime with the torch engine per layer; exit 1 when out of tolerance."""
    from rich.table import Table

    from nst_batch.export import VerifyConfig, parse_sizes, verify

    try:
        config = VerifyConfig(
            provider=providers.value,
            precision=precision.value,  # type: ignore[arg-type]
            sizes=parse_sizes(sizes),
            images=tuple(images or ()),
            weights=weights,
            trt_cache=trt_cache,
        )
        report = verify(model, config, progress=lambda line: _stderr().print(line))
    except NstError as err:
        raise _fail(str(err)) from None
    console = Console(highlight=False)
    console.print(
        f"{model}: {report.provider} {report.precision}, tolerance {report.tolerance:g} "
        f"(scaled max error = max|onnx - torch| / max|torch|); inputs: {', '.join(report.inputs)}"
    )
    table = Table("size", "layer", "max abs error", "max rel error", "ok")
    for c in report.checks:
        mark = "[green]ok[/]" if c.ok else "[bold red]FAIL[/]"
        size = f"{c.size[0]}x{c.size[1]}"
        table.add_row(size, c.layer, f"{c.max_abs:.3g}", f"{c.max_rel:.3g}", mark)
    console.print(table)
    times = Table("size", "batch", "onnx ms", "torch ms")
    for t in report.timings:
        times.add_row(
            f"{t.size[0]}x{t.size[1]}",
            str(t.batch),
            f"{1e3 * t.onnx_seconds:.1f}",
            f"{1e3 * t.torch_seconds:.1f}",
        )
    console.print(times)
    if not report.ok:
        bad = sorted({c.layer for c in report.failures})
        raise _fail(f"{len(report.failures)} checks out of tolerance (layers {', '.join(bad)})")
    console.print("[green]all layers within tolerance[/]")


def _defaults(flags: dict[str, object], pairs: list[str] | None, option: str) -> dict[str, object]:
    """Default stylize parameters of a batch command: its named flags that were given, then its
    repeatable ``KEY=VALUE`` option (checked later by job_settings)."""
    defaults = {k: v for k, v in flags.items() if v is not None}
    for item in pairs or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{option} expects KEY=VALUE, not {item!r}")
        defaults[key.strip()] = value.strip()
    return defaults


@app.command("watch")
def watch_command(
    inbox: Path = typer.Argument(..., help="Folder to watch for drops (see README: Watch folder)."),
    outbox: Path | None = typer.Option(None, help="Where results go (default: INBOX/../outbox)."),
    state: Path | None = typer.Option(
        None, help="Parent of work/, done/, failed/ (inbox's filesystem) (default: INBOX/..)."
    ),
    poll: bool = typer.Option(
        False, "--poll", help="Poll instead of inotify (NFS, SMB, Docker Desktop mounts)."
    ),
    settle: float = typer.Option(2.0, help="Seconds a drop's files must stay unchanged."),
    rescan: float = typer.Option(5.0, help="Seconds between scans when no event arrives."),
    once: bool = typer.Option(False, "--once", help="Process what is complete now, then exit."),
    worker_id: str | None = typer.Option(None, help="Name of this worker (default: hostname-pid)."),
    max_edge: int = typer.Option(8192, help="Refuse input images (and sizes) over this edge."),
    max_retries: int = typer.Option(2, help="Retries of a job that crashed (not bad input)."),
    grace: float = typer.Option(8.0, help="Seconds the running job may finish after SIGTERM."),
    status_interval: float = typer.Option(5.0, help="Seconds between status.json writes."),
    stale_after: float = typer.Option(60.0, help="A worker silent this long is dead."),
    batch_size: int = typer.Option(
        1, help="Jobs claimed at once; those of one size and settings optimize as one batch."
    ),
    output_format: str = typer.Option("png", "--format", help="Output format: png, jpg, webp."),
    log_json: bool = typer.Option(False, "--log-json", help="Log JSON lines instead of text."),
    preset: str | None = typer.Option(None, help="Default recipe (NAME.json may override)."),
    size: int | None = typer.Option(None, help="Default long edge of outputs (default: 512)."),
    steps: int | None = typer.Option(
        None, help="Default iterations" + _default(_D.optim.steps, "presets change it")
    ),
    style_weight: float | None = typer.Option(
        None, help="Default style weight" + _default(f"{_D.loss.style_weight:g}")
    ),
    line_search: LineSearchChoice | None = typer.Option(None, help=LINE_SEARCH_HELP),
    device: str | None = typer.Option(None, help="auto, cpu or cuda[:N] (default: auto)."),
    weights: str | None = typer.Option(None, help="bundled, torchvision or a weights file."),
    targets_backend: TargetsBackend | None = typer.Option(None, help="torch, onnx or auto."),
    params: list[str] | None = typer.Option(
        None, "--param", help="Any other default parameter as KEY=VALUE (repeatable)."
    ),
    check_onnx: Path | None = typer.Option(
        None, help="An `nst-batch export`: refuse to start if the engine disagrees with it."
    ),
) -> None:
    """Watch INBOX: each dropped pair (NAME.content.EXT + NAME.style.EXT) or job folder becomes
    OUTBOX/NAME.png; inputs move to done/ or failed/ (with NAME.error.json)."""
    from nst_batch.engine.model import resolve_device
    from nst_batch.params import configs_from_params as job_settings
    from nst_batch.pool import ModelPool
    from nst_batch.watcher import logs
    from nst_batch.watcher.config import make_config
    from nst_batch.watcher.daemon import watch

    try:
        flags: dict[str, object] = {
            "preset": preset,
            "size": size,
            "steps": steps,
            "style_weight": style_weight,
            "line_search": line_search.value if line_search else None,
            "device": device,
            "weights": weights,
            "targets_backend": targets_backend.value if targets_backend else None,
        }
        defaults = _defaults(flags, params, "--param")
        settings, _ = job_settings({}, defaults)  # bad defaults fail now, not on every job
        resolve_device(settings.model.device)  # as does a device this machine lacks
        config = make_config(
            inbox,
            defaults,
            outbox=outbox,
            state=state,
            worker_id=worker_id,
            settle=settle,
            rescan=rescan,
            poll=poll,
            once=once,
            max_edge=max_edge,
            max_retries=max_retries,
            grace=grace,
            status_interval=status_interval,
            stale_after=stale_after,
            batch_size=batch_size,
            output_format="." + output_format.lower().lstrip("."),
        )
        code = watch(config, ModelPool(check_onnx), logs.configure(log_json))
    except NstError as err:
        raise _fail(str(err)) from None
    raise typer.Exit(code)


@app.command("status")
def status_command(
    inbox: Path = typer.Argument(..., help="The inbox a daemon watches."),
    max_age: float | None = typer.Option(
        None, help="Exit 1 unless a worker reported within this many seconds."
    ),
    local: bool = typer.Option(
        False, "--local", help="Only workers on this host (a container's own health)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print status.json as it is."),
) -> None:
    """Print the daemons' status.json; exit 1 if it is missing or no worker is live (stopped,
    dead, or silent past --max-age): for HEALTHCHECK."""
    import json
    import time

    from nst_batch.watcher.config import STATUS_NAME
    from nst_batch.watcher.status import judged, live_workers, read_summary

    try:
        summary = read_summary(inbox / STATUS_NAME)
    except NstError as err:
        raise _fail(str(err)) from None
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        now = time.time()
        for w in map(judged, summary["workers"]):
            current = w.get("current") or "-"
            state = f"dead ({w.get('dead_reason')})" if w.get("state") == "dead" else w.get("state")
            print(
                f"{w.get('worker_id')}: {state}, updated {now - w.get('updated', 0):.0f}s "
                f"ago, queue {w.get('queue_depth')}, current {current}, done {w.get('done')}, "
                f"skipped {w.get('skipped')}, failed {w.get('failed')}, "
                f"last error {w.get('last_error') or '-'}"
            )
        if not summary["workers"]:
            print("no workers")
        print(f"{len(live_workers(summary))} of {len(summary['workers'])} workers live")
        for job in summary.get("incomplete", []):  # settled in the inbox, a part missing
            missing, files = ", ".join(job["missing"]), ", ".join(job["files"])
            print(f"incomplete job {job['job']}: no {missing} ({files})")
    if not live_workers(summary, max_age, local):
        within = "" if max_age is None else f" reported in the last {max_age:g} s"
        raise _fail(f"no live {'local ' if local else ''}worker{within}")


@app.command("score")
def score_command(
    output: Path = typer.Argument(..., help="The stylized image to measure."),
    content: Path = typer.Argument(..., help="The content image it was made from."),
    styles: list[Path] = typer.Argument(..., help="The style image(s) it was made with."),
    size: int | None = typer.Option(
        None, help="Long edge the output is evaluated at (default: its own size)."
    ),
    style_blend: str | None = typer.Option(
        None, help="Blend weights of several style images, e.g. 0.7,0.3 (default: equal)."
    ),
    style_scale: float = typer.Option(1.0, help="Style size relative to the output, as stylize."),
    weights: str = typer.Option("bundled", help="bundled, torchvision or a path."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON on stdout."),
) -> None:
    """Style distance (relative Gram error, relu1_1..relu5_1) and content distance (relu4_2)
    of OUTPUT; 0 = perfect match. Formulas: `nst_batch.metrics`."""
    import dataclasses
    import json

    from rich.table import Table

    from nst_batch.metrics import MetricsConfig, score

    try:
        config = MetricsConfig(
            weights=weights,
            device=device,
            size=size,
            style_scale=style_scale,
            style_blend=parse_floats(style_blend) if style_blend else None,
        )
        scores = score(output, content, styles, config)
    except NstError as err:
        raise _fail(str(err)) from None
    if as_json:
        print(json.dumps(dataclasses.asdict(scores), indent=2))
        return
    table = Table("distance", "value", title=f"{output.name} ({scores.size[0]}x{scores.size[1]})")
    table.add_row("[bold]style[/] (mean)", f"[bold]{scores.style:.4f}")
    for layer, value in scores.per_layer.items():
        table.add_row(f"  style {layer}", f"{value:.4f}")
    table.add_row("[bold]content[/] (relu4_2)", f"[bold]{scores.content:.4f}")
    Console(highlight=False).print(table)


@contextmanager
def _run_progress(console: Console) -> Iterator[RunCallbacks]:
    """A bar for the jobs (done/failed/skipped, ETA) and one for the current job's steps on a
    terminal; plain log lines otherwise."""
    from collections import Counter

    from nst_batch.manifest import RunCallbacks

    counts: Counter[str] = Counter()

    def tally() -> str:
        return ", ".join(f"{counts[s]} {s}" for s in ("done", "failed", "skipped") if counts[s])

    if not console.is_terminal:
        total = 0

        def plan(p: Plan) -> None:
            nonlocal total
            total = len(p.jobs)
            shard = f" (shard {p.shard} of {p.rows} rows)" if p.shard else ""
            print(
                f"{total} jobs{shard}, {sum(j.done for j in p.jobs)} already done",
                file=sys.stderr,
                flush=True,
            )

        def start(j: PlannedJob) -> None:
            print(f"line {j.line}: {j.raw['output']} ...", file=sys.stderr, flush=True)

        due: dict[int, Callable[[Step], bool]] = {}

        def step(j: PlannedJob, p: Step) -> None:
            if due.setdefault(j.line, log_due(10))(p):
                print(f"  {_step_line(p)}", file=sys.stderr, flush=True)

        def end(o: JobOutcome) -> None:
            counts[o.status] += 1
            reason = f": {o.reason}" if o.reason else ""
            if o.converged is False:
                reason = f": warning: the optimization failed: {o.reason}"
            seconds = f" in {o.seconds:.1f}s" if o.seconds is not None else ""
            done = sum(counts.values())
            print(
                f"[{done}/{total}] line {o.line}: {o.status}{seconds}{reason}",
                file=sys.stderr,
                flush=True,
            )

        yield RunCallbacks(plan=plan, start=start, step=step, end=end)
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, console=console) as bar:
        jobs = bar.add_task("jobs", total=None, info="validating")
        current = bar.add_task("", total=None, info="", visible=False)

        def plan_bar(p: Plan) -> None:
            bar.update(jobs, total=len(p.jobs), info="")

        def start_bar(j: PlannedJob) -> None:
            bar.reset(current, total=None, description=f"line {j.line}", info="", visible=True)

        def step_bar(j: PlannedJob, p: Step) -> None:
            info = f"{j.raw['output']}{_at(p)} loss {p.loss:.4g}"
            bar.update(current, completed=p.step, total=p.total, info=info)

        def end_bar(o: JobOutcome) -> None:
            counts[o.status] += 1
            bar.update(jobs, advance=1, info=tally())
            if o.status == "failed":
                bar.console.print(f"[red]line {o.line} failed:[/] {o.reason}", soft_wrap=True)
            elif o.converged is False:
                bar.console.print(
                    f"[bold yellow]warning:[/] line {o.line}: the optimization failed: {o.reason}",
                    soft_wrap=True,
                )

        yield RunCallbacks(plan=plan_bar, start=start_bar, step=step_bar, end=end_bar)


def _report_table(report: Report, title: str, limit: int = 100) -> Table:
    """The plan (dry run) or the outcome of each job; past ``limit`` rows only those that did not
    simply finish (report.csv has them all)."""
    from rich.table import Table

    rows = report.rows
    if len(rows) > limit:
        rows = tuple(r for r in rows if r.status not in ("done", "skipped"))
    colours = {"done": "green", "failed": "bold red", "interrupted": "yellow"}
    if report.dry_run:
        table = Table("line", "content", "styles", "output", "size", "steps", "status")
    else:
        table = Table("line", "output", "status", "seconds", "it/s", "loss", "reason")
    table.title = title
    for r in rows:
        status = f"[{colours.get(r.status, 'default')}]{r.status}[/]"
        if report.dry_run:
            table.add_row(
                str(r.line), r.content, r.styles, r.output, str(r.size), str(r.steps), status
            )
            continue
        table.add_row(
            str(r.line),
            r.output,
            status,
            f"{r.seconds:.1f}" if r.seconds is not None else "",
            f"{r.iterations_per_s:.2f}" if r.iterations_per_s is not None else "",
            f"{r.loss:.4g}" if r.loss is not None else "",
            r.reason,
        )
    return table


@contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (docker stop, Kubernetes, Slurm) ends a command as Ctrl-C does: KeyboardInterrupt
    in the main thread, so the optimization stops and what it has is saved or reported."""
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be set from the main thread
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command("run")
def run_command(
    manifest: Path = typer.Argument(..., help="A .csv or .jsonl manifest of jobs."),
    config_file: Path | None = typer.Option(
        None, "--config", help="JSON or TOML file of default stylize parameters."
    ),
    preset: str | None = typer.Option(None, help="Recipe rows start from (default: default)."),
    size: int | None = typer.Option(None, help="Default long edge of the outputs (default: 512)."),
    steps: int | None = typer.Option(
        None, help="Default iterations" + _default(_D.optim.steps, "presets change it")
    ),
    style_weight: float | None = typer.Option(
        None, help="Default weight of style" + _default(f"{_D.loss.style_weight:g}")
    ),
    content_weight: float | None = typer.Option(
        None, help="Default weight of content" + _default(f"{_D.loss.content_weight:g}")
    ),
    line_search: LineSearchChoice | None = typer.Option(None, help=LINE_SEARCH_HELP),
    device: str | None = typer.Option(None, help="auto, cpu or cuda[:N] (default: auto)."),
    weights: str | None = typer.Option(
        None, help="bundled, torchvision or a path (default: bundled)."
    ),
    settings: list[str] | None = typer.Option(
        None, "--set", help="Any other default stylize parameter, KEY=VALUE (repeatable)."
    ),
    force: bool = typer.Option(False, "--force", help="Redo jobs that are already done."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and print the plan only."),
    shard: str | None = typer.Option(None, help="Run only shard I/N (rows k with k mod N = I)."),
    shards: int | None = typer.Option(
        None, help="N shards; the index from JOB_COMPLETION_INDEX or SLURM_ARRAY_TASK_ID."
    ),
    batch_size: int = typer.Option(
        1, min=1, help="Jobs of one size and settings optimized as one batch (pays on a GPU)."
    ),
    report_dir: Path | None = typer.Option(
        None, help="Folder for MANIFEST.report.json/.csv (default: the manifest's folder)."
    ),
    check_onnx: Path | None = typer.Option(
        None, help="An `nst-batch export`: check the engine's features against it first."
    ),
    ray: bool = typer.Option(False, "--ray", help="Run the jobs on Ray actors (extra `ray`)."),
    ray_address: str | None = typer.Option(
        None, help="Ray cluster to join (implies --ray) (default: a local one, or $RAY_ADDRESS)."
    ),
) -> None:
    """Run every job of MANIFEST: validated up front, resumable, shardable; writes a report."""
    import os

    from nst_batch.distributed import run_on_ray
    from nst_batch.errors import ManifestError
    from nst_batch.manifest import ManifestConfig, run_manifest, shard_from_env

    try:
        flags: dict[str, object] = {
            "preset": preset,
            "size": size,
            "steps": steps,
            "style_weight": style_weight,
            "content_weight": content_weight,
            "line_search": line_search.value if line_search else None,
            "device": device,
            "weights": weights,
        }
        config = ManifestConfig(
            defaults=_defaults(flags, settings, "--set"),
            config_file=config_file,
            force=force,
            dry_run=dry_run,
            shard=shard_from_env(shard, shards, os.environ),
            batch_size=batch_size,
            check_onnx=check_onnx,
            report_dir=report_dir,
            ray_address=ray_address,
        )
    except ConfigError as err:
        raise _fail(str(err), 2) from None
    console = _stderr()
    try:
        with _sigterm_as_ctrl_c(), _run_progress(console) as callbacks:
            runner = run_on_ray if ray or ray_address is not None else None
            report = run_manifest(manifest, config, None if dry_run else callbacks, runner)
    except ManifestError as err:
        raise _fail(str(err), 2) from None
    except NstError as err:
        raise _fail(str(err)) from None
    except KeyboardInterrupt:  # before the first job: nothing was written
        raise _fail("interrupted before any job ran; nothing written", EXIT_INTERRUPTED) from None
    if dry_run:
        _table_console().print(_report_table(report, f"plan for {manifest}"))
        counts = report.counts()
        print(f"{counts['would-run']} would run, {counts['skipped']} already done")
        return
    _table_console(stderr=True).print(_report_table(report, f"{manifest}"))
    counts = report.counts()
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    console.print(f"{summary or 'no jobs'}; report: {', '.join(map(str, report.files))}")
    if report.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    if report.failed:
        raise typer.Exit(1)


def main() -> None:
    app()
