"""One image: ``stylize`` and ``demo``; and what to start from: ``presets`` and ``features``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from nst_batch.cli import options as opt
from nst_batch.cli.common import (
    EXIT_INTERRUPTED,
    fail,
    mapped_errors,
    optimization_failed,
    progress_reporter,
    sigterm_as_ctrl_c,
    stderr,
)
from nst_batch.config import OutputConfig
from nst_batch.errors import ConfigError
from nst_batch.jobs.sidecar import Sidecar, sidecar_path
from nst_batch.params import OUTPUT_KEYS, PRESETS, build_config, parse_floats, parse_layers

if TYPE_CHECKING:
    from nst_batch.config import StylizeConfig
    from nst_batch.jobs.run import StylizeResult

# Parameters given on the command line as text, in the format manifests use.
TEXT_PARSERS = {
    "content_layers": parse_layers,
    "style_layers": parse_layers,
    "style_blend": parse_floats,
}


@mapped_errors()
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
    styles: opt.Styles = None,
    style_blend: opt.StyleBlend = None,
    style_scale: opt.StyleScale = None,
    preserve_colors: opt.PreserveColors = None,
    preset: opt.Preset = opt.DEFAULTS.preset,
    size: opt.Size = None,
    steps: opt.Steps = None,
    optimizer: opt.Optimizer = None,
    lr: opt.Lr = None,
    content_weight: opt.ContentWeight = None,
    style_weight: opt.StyleWeight = None,
    tv_weight: opt.TvWeight = None,
    content_layers: opt.ContentLayers = None,
    style_layers: opt.StyleLayers = None,
    init: opt.Init = None,
    seed: opt.Seed = None,
    scales: opt.Scales = None,
    scale_steps: opt.ScaleSteps = None,
    ema: opt.Ema = None,
    max_seconds: opt.MaxSeconds = None,
    tolerance: opt.Tolerance = None,
    window: opt.Window = None,
    save_every: opt.SaveEvery = 0,
    line_search: opt.LineSearch = None,
    sheet: opt.Sheet = False,
    reconstruct: opt.ReconstructFrom = None,
    device: opt.Device = None,
    weights: opt.Weights = None,
    pooling: opt.Pooling = None,
    max_pixels: opt.MaxPixels = None,
    targets_backend: opt.Targets = None,
    check_onnx: opt.CheckOnnx = None,
    precision: opt.Precision = None,
    cuda_graphs: opt.CudaGraphs = None,
    max_memory: opt.MaxMemory = None,
    tile: opt.Tile = None,
    num_steps: opt.NumSteps = None,
    original_colors: opt.OriginalColors = False,
    style_blend_weights: opt.StyleBlendWeights = None,
) -> None:
    """Stylize CONTENT with the look of STYLE; writes OUTPUT and OUTPUT.json (all parameters)."""
    steps = opt.alias("--steps", steps, num_steps)
    preserve_colors = opt.alias("--preserve-colors", preserve_colors, original_colors)
    style_blend = opt.alias("--style-blend", style_blend, style_blend_weights)
    params = opt.parameters(locals())  # every option that is a stylize parameter, by name
    style_list = ([style] if style else []) + list(styles or [])
    if reconstruct is not None:
        # Reconstruction from white noise, as in the paper's Fig. 1.
        params["init"] = init or opt.NOISE_INIT
        params["content_weight" if reconstruct == "style" else "style_weight"] = 0.0
        if reconstruct == "content" and not style_list:
            style_list = [content]  # unused at weight 0; only its presence is checked
    config, outputs = _configs(params)
    if not style_list:
        raise fail("give a STYLE image (or --style PATH)", 2)
    _run_stylize(content, style_list, output, config, outputs, check_onnx)


def _configs(params: Mapping[str, Any]) -> tuple[StylizeConfig, OutputConfig]:
    """The configs of flat parameters (None = the preset's value); text formats parsed."""
    overrides = {name: _parsed(name, value) for name, value in params.items()}
    outputs = {name: overrides.pop(name) for name in OUTPUT_KEYS}
    config = build_config(overrides.pop("preset"), **overrides)
    return config, OutputConfig(**outputs)


def _parsed(name: str, value: Any) -> Any:
    parse = TEXT_PARSERS.get(name)
    if parse is None:
        return value
    return parse(value) if value else None


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

    with mapped_errors(interrupted="interrupted before optimization started; nothing written"):
        models = ModelPool(check_onnx)
        with sigterm_as_ctrl_c(), progress_reporter(output.name) as report:
            result = stylize(content, styles, output, config, report, outputs, models)
    _report(result, output)
    if result.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)


def top_history(sidecar: Sidecar) -> int:
    """The L-BFGS history the job asked for (0 for Adam), to tell a plan that shortened it."""
    optim = sidecar.parameters["optim"]
    return int(optim["history_size"]) if optim["optimizer"] == "lbfgs" else 0


def _report(result: StylizeResult, output: Path) -> None:
    sidecar = result.sidecar
    verb = "interrupted; saved best image so far to" if result.interrupted else "wrote"
    top = sidecar.pyramid[-1]
    final = top.seconds_per_iteration or 0.0
    why = {"time": ", time budget spent", "converged": ", converged"}.get(sidecar.stop_reason, "")
    stderr().print(
        f"{verb} {output} ({sidecar.steps_completed} steps{why}; {final:.3f} s/it at "
        f"{top.long_edge} px on {sidecar.device}, {sidecar.precision}) "
        f"and {sidecar_path(output)}",
        soft_wrap=True,
    )
    if not sidecar.converged:
        stderr().print(optimization_failed(sidecar.convergence, str(output)), soft_wrap=True)
    memory = sidecar.memory
    if memory is not None and (memory.tile or memory.history_size != top_history(sidecar)):
        stderr().print(f"memory: {memory.describe()}", soft_wrap=True)
    if sidecar.cuda_graphs.startswith("fallback"):
        stderr().print(
            f"[bold yellow]warning:[/] CUDA graphs {sidecar.cuda_graphs}; the job ran eagerly",
            soft_wrap=True,
            markup=True,
        )


def presets_command() -> None:
    """List the named recipes (use with --preset)."""
    from rich.table import Table

    table = Table("preset", "what it is", "steps", "init", show_lines=True)
    for p in PRESETS.values():
        table.add_row(p.name, p.description, str(p.optim.steps), p.init)
    Console().print(table)


@mapped_errors()
def features_command(
    image: Path = typer.Argument(..., help="Image to look at."),
    output: Path = typer.Option(..., "--output", "-o", help="Grid image to write (.png)."),
    layers: str = typer.Option(
        "relu1_1,relu2_1,relu3_1,relu4_1,relu5_1", help="Layers, one row each."
    ),
    channels: int = typer.Option(8, help="Most active feature maps shown per layer."),
    size: int = typer.Option(256, help="Long edge the image is analysed at."),
    weights: opt.Weights = opt.DEFAULTS.model.weights,
    device: opt.Device = opt.DEFAULTS.model.device,
) -> None:
    """Draw the feature maps of chosen VGG19 layers for IMAGE, one row per layer."""
    from nst_batch.engine.model import ModelConfig, load_model, resolve_device
    from nst_batch.features import feature_grid
    from nst_batch.images import check_output_path, load_image, save_pil

    names = opt.layer_names(layers)
    if not 1 <= channels <= 64:
        raise ConfigError("channels must be between 1 and 64")
    check_output_path(output)
    picture = load_image(image, size)
    torch_device = resolve_device(device)
    model, _ = load_model(ModelConfig(weights=weights), names, torch_device)
    save_pil(feature_grid(picture.to(torch_device), model, names, channels), output)
    stderr().print(f"wrote {output} ({len(names)} layers x {channels} feature maps)")


@mapped_errors()
def demo_command(
    output_dir: Path = typer.Option(Path("demo-output"), "--output-dir", "-o", help="Folder."),
    size: int = typer.Option(256, help="Long edge of the output (256 takes ~2 min on 2 cores)."),
    steps: int = typer.Option(200, help="L-BFGS iterations."),
    device: opt.Device = opt.DEFAULTS.model.device,
) -> None:
    """Stylize a built-in photo with a built-in painting (no downloads)."""
    from nst_batch.demo import content_photo, swirl_painting
    from nst_batch.images import save_image, to_tensor

    output_dir.mkdir(parents=True, exist_ok=True)
    content_path, style_path = output_dir / "content.png", output_dir / "style.png"
    save_image(to_tensor(content_photo()), content_path)
    save_image(to_tensor(swirl_painting()), style_path)
    config = build_config(size=size, steps=steps, device=device)
    stderr().print(f"inputs: {content_path} + {style_path}")
    outputs = OutputConfig(sheet=True)
    _run_stylize(content_path, [style_path], output_dir / "stylized.png", config, outputs)
