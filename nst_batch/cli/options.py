"""Options declared once: the choices, help texts that show the library's real defaults, the
keywords taken from the library (init names, weights sources), stylize's parameter options (one
``Annotated`` type each) and the default-parameter flags that ``run`` and ``watch`` share.

A command's options that are stylize parameters are picked out by the library's flat-parameter
table (:func:`parameters`), so no command lists them again by hand."""

from __future__ import annotations

from collections.abc import Mapping
from copy import copy
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_args

import typer

from nst_batch.cli.common import fail
from nst_batch.config import INIT_ALIASES, INIT_KEYWORDS
from nst_batch.engine.weights import BUNDLED, TORCHVISION
from nst_batch.errors import ConfigError
from nst_batch.params import build_config, parameter_names, parse_layers

_T = TypeVar("_T")


def choices(name: str, *values: str) -> Any:
    """A str enum of ``values``: typer lists them as <a|b|c> and accepts only those."""
    return Enum(name, [(value, value) for value in values], type=str)


OptimizerChoice = choices("OptimizerChoice", "lbfgs", "adam")
LineSearchChoice = choices("LineSearchChoice", "reject", "backtrack", "none")
PoolingChoice = choices("PoolingChoice", "max", "avg")
EnginePrecision = choices("EnginePrecision", "auto", "fp32", "tf32", "bf16")
TargetsBackend = choices("TargetsBackend", "auto", "torch", "onnx")
Reconstruct = choices("Reconstruct", "content", "style")


# The default preset's values, shown in --help (a --preset changes them; flags override both).
DEFAULTS = build_config()
FLAG = ""  # metavar of an on/off flag: nothing after the name


def default(value: object, note: str = "") -> str:
    return f" (default: {value}{'; ' + note if note else ''})"


# Keywords from the library: the init names with the aliases other tools use for them, and the
# named weights sources.
INIT_NAMES = INIT_KEYWORDS  # content, noise
NOISE_INIT = INIT_ALIASES["random"]  # neural-style's "random" start is white noise
INIT_HELP = (
    "Start image: "
    + ", ".join(
        f"{name} (or {', '.join(a for a, n in INIT_ALIASES.items() if n == name)})"
        for name in INIT_NAMES
    )
    + " or an image file"
)


def plain(value: Any) -> Any:
    """An option's value as the library takes it: a choice as its string."""
    return value.value if isinstance(value, Enum) else value


def parameters(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options (a command's ``locals()``) that are stylize parameters, named by the
    library's flat-parameter table; None means not given."""
    return {name: plain(options[name]) for name in parameter_names() if name in options}


def layer_names(text: str) -> tuple[str, ...]:
    """The layers a LAYERS option names (any weights given with them are not needed)."""
    return tuple(name for name, _ in parse_layers(text))


def alias(name: str, value: _T, other: _T | None) -> _T:
    """A flag's value, or its hidden alias's (the spelling users of neural-style type)."""
    if other is None or other is False:
        return value
    if value is not None and value is not False and value != other:
        raise fail(f"{name} and its alias disagree ({value!r} vs {other!r})", 2)
    return other


def batch_defaults(
    flags: dict[str, object], pairs: list[str] | None, option: str
) -> dict[str, object]:
    """Default stylize parameters of a batch command: its named flags that were given, then its
    repeatable ``KEY=VALUE`` option (checked later by configs_from_params)."""
    defaults = {k: v for k, v in flags.items() if v is not None}
    for item in pairs or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{option} expects KEY=VALUE, not {item!r}")
        defaults[key.strip()] = value.strip()
    return defaults


# `stylize`'s options, in the order --help lists them (the command gives the defaults).
Styles = Annotated[
    list[Path] | None,
    typer.Option("--style", metavar="PATH", help="A style image; repeat to blend several."),
]
StyleBlend = Annotated[
    str | None,
    typer.Option(
        metavar="W,W,...",
        help="Blend weights of the style images, e.g. 0.7,0.3" + default("equal"),
    ),
]
StyleScale = Annotated[
    float | None,
    typer.Option(
        metavar="X",
        help="Style image size relative to the output (0.5 = finer brush "
        "strokes)" + default(DEFAULTS.style_scale),
    ),
]
PreserveColors = Annotated[
    bool | None,
    typer.Option(
        "--preserve-colors",
        metavar=FLAG,
        help="Keep the content's colours (stylized luminance only).",
    ),
]
Preset = Annotated[
    str | None,
    typer.Option(
        metavar="NAME",
        show_default=False,
        help="Recipe to start from, see `nst-batch presets`" + default(DEFAULTS.preset),
    ),
]
Size = Annotated[
    int | None,
    typer.Option(metavar="PX", help="Long edge of the output in pixels" + default(DEFAULTS.size)),
]
Steps = Annotated[
    int | None,
    typer.Option(
        metavar="N",
        help="Iterations at the final scale" + default(DEFAULTS.optim.steps, "presets change it"),
    ),
]
Optimizer = Annotated[
    OptimizerChoice | None, typer.Option(help="The optimizer" + default(DEFAULTS.optim.optimizer))
]
Lr = Annotated[
    float | None,
    typer.Option(metavar="LR", help="Step size (default: 1.0 for lbfgs, 0.02 for adam)."),
]
ContentWeight = Annotated[
    float | None,
    typer.Option(
        metavar="W", help="Weight of content" + default(f"{DEFAULTS.loss.content_weight:g}")
    ),
]
StyleWeight = Annotated[
    float | None,
    typer.Option(
        metavar="W",
        help="Weight of style, higher = more style" + default(f"{DEFAULTS.loss.style_weight:g}"),
    ),
]
TvWeight = Annotated[
    float | None,
    typer.Option(
        metavar="W",
        help="Weight of total variation (smoothness)" + default(f"{DEFAULTS.loss.tv_weight:g}"),
    ),
]
ContentLayers = Annotated[
    str | None,
    typer.Option(
        metavar="LAYERS",
        help="Content layers with optional weights, e.g. relu4_2 or relu3_1:0.5,relu4_2"
        + default(",".join(n for n, _ in DEFAULTS.loss.content_layers)),
    ),
]
StyleLayers = Annotated[
    str | None,
    typer.Option(
        metavar="LAYERS",
        help="Style layers with weights, e.g. relu1_1:0.5,relu3_1:0.5"
        + default("relu1_1..relu5_1 weighted 256:64:16:4:1"),
    ),
]
Init = Annotated[
    str | None,
    typer.Option(metavar="|".join((*INIT_NAMES, "PATH")), help=INIT_HELP + default(DEFAULTS.init)),
]
Seed = Annotated[
    int | None,
    typer.Option(
        metavar="N", help="Seed for noise init; same seed, same CPU result" + default(DEFAULTS.seed)
    ),
]
Scales = Annotated[
    int | None,
    typer.Option(
        metavar="N", help="Coarse-to-fine levels, 1 = off (default: automatic, on from 384 px)."
    ),
]
ScaleSteps = Annotated[
    int | None,
    typer.Option(metavar="N", help="Iterations at each coarser scale (default: half of --steps)."),
]
Ema = Annotated[
    float | None,
    typer.Option(
        metavar="DECAY", help="Average the iterates with this decay, e.g. 0.9 (default: off)."
    ),
]
MaxSeconds = Annotated[
    float | None,
    typer.Option(
        metavar="S",
        help="Time budget for the optimization, split over the pyramid levels (see README).",
    ),
]
Tolerance = Annotated[
    float | None,
    typer.Option(
        metavar="FRACTION",
        help="Stop early when the loss improves less than this fraction over --window.",
    ),
]
Window = Annotated[
    int | None,
    typer.Option(
        metavar="N", help="Steps over which --tolerance is judged" + default(DEFAULTS.optim.window)
    ),
]
SaveEvery = Annotated[
    int,
    typer.Option(
        metavar="N",
        show_default=False,
        help="Also save every N-th iterate beside OUT, same format: out.0050.png (default: off).",
    ),
]
LineSearch = Annotated[
    LineSearchChoice | None,
    typer.Option(
        help="L-BFGS safeguard per image: reject (undo a step that more than doubles the loss), "
        "backtrack (Armijo line search) or none (torch's plain L-BFGS)"
        + default(DEFAULTS.optim.line_search)
        + "."
    ),
]
Sheet = Annotated[
    bool,
    typer.Option(
        "--sheet",
        metavar=FLAG,
        help="Also write OUT.sheet.png (inputs | result) and OUT.loss.png.",
    ),
]
ReconstructFrom = Annotated[
    Reconstruct | None,
    typer.Option(
        help="content: content-only from noise (no style needed); style: style-only.",
    ),
]
# Both show the library's default: a command that passes None gets it too.
Device = Annotated[
    str | None,
    typer.Option(
        metavar="auto|cpu|cuda[:N]|mps",
        show_default=False,
        help="Where to compute" + default(DEFAULTS.model.device),
    ),
]
Weights = Annotated[
    str | None,
    typer.Option(
        metavar=f"{BUNDLED.name}|{TORCHVISION.name}|PATH",
        show_default=False,
        help=f"VGG19 weights: {BUNDLED.name} (original, offline), {TORCHVISION.name}, or a "
        ".pth/.safetensors file" + default(DEFAULTS.model.weights),
    ),
]
Pooling = Annotated[
    PoolingChoice | None,
    typer.Option(help="Pooling layers" + default(DEFAULTS.model.pooling, "gatys preset: avg")),
]
MaxPixels = Annotated[
    int | None,
    typer.Option(
        metavar="N",
        help="Refuse input images with more pixels, a guard against decompression bombs; "
        "raise it for large camera files (default: Pillow's 89478485).",
    ),
]
Targets = Annotated[
    TargetsBackend | None,
    typer.Option(
        help="Compute style/content targets in torch or ONNX Runtime (default: auto).",
    ),
]
CheckOnnx = Annotated[
    Path | None,
    typer.Option(
        metavar="MODEL.onnx",
        help="An `nst-batch export`: check the engine's features against it first.",
    ),
]
Precision = Annotated[
    EnginePrecision | None,
    typer.Option(
        help="auto (bf16 where the hardware has it, else fp32), fp32, tf32 (CUDA convolutions) "
        "or bf16 (autocast; Gram matrices and losses stay fp32)"
        + default(DEFAULTS.model.precision),
    ),
]
CudaGraphs = Annotated[
    bool | None,
    typer.Option(
        "--cuda-graphs/--no-cuda-graphs",
        metavar=FLAG,
        help="Replay each step as a CUDA graph (default: on).",
    ),
]
MaxMemory = Annotated[
    float | None,
    typer.Option(
        metavar="GB",
        help="Memory budget of a job in GB; larger images are optimized tile by tile (exactly) "
        "and the optimizer state shrinks to fit (default: the device's free memory, on a CPU "
        "the available RAM, less 15%).",
    ),
]
Tile = Annotated[
    int | None,
    typer.Option(
        metavar="PX",
        help="Evaluate in tiles of PX pixels (plus a halo) even when the image fits "
        "(default: only when it does not fit the budget).",
    ),
]
# Hidden aliases: the names users of neural-style and its ports type.
NumSteps = Annotated[int | None, typer.Option("--num-steps", hidden=True)]
OriginalColors = Annotated[bool, typer.Option("--original-colors", "--preserve-color", hidden=True)]
StyleBlendWeights = Annotated[str | None, typer.Option("--style-blend-weights", hidden=True)]


def job_default(option: Any) -> Any:
    """A stylize option as ``run`` and ``watch`` take it: the jobs' default, which a manifest
    row or a NAME.json may override ("Long edge ..." becomes "Default long edge ...")."""
    kind, info = get_args(option)
    info = copy(info)
    info.help = "Default " + info.help[0].lower() + info.help[1:]
    return Annotated[kind | None, info]


# The default stylize parameters `run` and `watch` take as flags (besides --line-search,
# --device, --weights, --targets-backend as stylize has them); any other as KEY=VALUE.
DefaultPreset = job_default(Preset)
DefaultSize = job_default(Size)
DefaultSteps = job_default(Steps)
DefaultStyleWeight = job_default(StyleWeight)
DefaultContentWeight = job_default(ContentWeight)
