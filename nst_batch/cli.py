"""The ``nst-batch`` command line: parse, build a config, call one library function, map errors."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path

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

from nst_batch import __version__
from nst_batch.engine.losses import LossConfig
from nst_batch.engine.optimize import OptimConfig
from nst_batch.engine.optimize import Progress as Step
from nst_batch.errors import NstError
from nst_batch.stylize import ModelConfig, StylizeConfig, StylizeResult, sidecar_path

app = typer.Typer(
    name="nst-batch",
    help="Neural style transfer (Gatys et al.) with real VGG19 weights.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
EXIT_INTERRUPTED = 130  # the shell's convention for SIGINT


class OptimizerChoice(str, Enum):
    lbfgs = "lbfgs"
    adam = "adam"


class PoolingChoice(str, Enum):
    max = "max"
    avg = "avg"


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


def _fail(message: str, code: int = 1) -> typer.Exit:
    _stderr().print(f"[bold red]error:[/] {message}", soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def _progress_reporter(label: str, log_every: int) -> Iterator[Callable[[Step], None]]:
    """A rich bar on a terminal; plain log lines (every ``log_every`` steps) otherwise."""
    console = _stderr()
    if not console.is_terminal:

        def log(p: Step) -> None:
            if p.step == 1 or p.step % log_every == 0 or p.step == p.total:
                print(
                    f"step {p.step}/{p.total} loss={p.loss:.4g} content={p.content:.4g} "
                    f"style={p.style:.4g} tv={p.tv:.4g} elapsed={p.elapsed:.1f}s",
                    file=sys.stderr,
                    flush=True,
                )

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
            losses = f"loss {p.loss:.4g} (c {p.content:.3g} s {p.style:.3g} tv {p.tv:.3g})"
            bar.update(task, completed=p.step, total=p.total, losses=losses)

        yield update


def _report(result: StylizeResult, output: Path) -> None:
    meta = result.metadata
    console = _stderr()
    verb = "interrupted; saved best image so far to" if result.interrupted else "wrote"
    console.print(
        f"{verb} {output} ({meta['steps_completed']} steps, "
        f"{meta['seconds_per_iteration'] or 0:.3f} s/it on {meta['device']}) "
        f"and {sidecar_path(output)}",
        soft_wrap=True,
    )


def _run_stylize(content: Path, style: Path, output: Path, config: StylizeConfig) -> None:
    from nst_batch.stylize import stylize

    try:
        with _progress_reporter(output.name, log_every=max(1, config.optim.steps // 20)) as report:
            result = stylize(content, style, output, config, progress=report)
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


@app.command("stylize")
def stylize_command(
    content: Path = typer.Argument(..., help="Content image (any format Pillow reads)."),
    style: Path = typer.Argument(..., help="Style image."),
    output: Path = typer.Option(..., "--output", "-o", help="Output image: .png, .jpg or .webp."),
    size: int = typer.Option(512, help="Long edge of the output in pixels."),
    steps: int = typer.Option(300, help="Optimizer iterations."),
    optimizer: OptimizerChoice = typer.Option(OptimizerChoice.lbfgs, help="lbfgs or adam."),
    lr: float | None = typer.Option(None, help="Step size (default 1.0 for L-BFGS, 0.02 Adam)."),
    content_weight: float = typer.Option(LossConfig.content_weight, help="Weight of content."),
    style_weight: float = typer.Option(
        LossConfig.style_weight, help="Weight of style (relative Gram error); higher = more style."
    ),
    tv_weight: float = typer.Option(LossConfig.tv_weight, help="Weight of total variation."),
    init: str = typer.Option("content", help="Start image: content, noise or an image path."),
    seed: int = typer.Option(0, help="Seed for noise init; same seed, same CPU result."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    weights: str = typer.Option(
        "bundled",
        help="bundled (original VGG19, offline), torchvision, or a .pth/.safetensors path.",
    ),
    pooling: PoolingChoice = typer.Option(PoolingChoice.max, help="max or avg pooling."),
) -> None:
    """Stylize CONTENT with the look of STYLE; writes OUTPUT and OUTPUT.json (all parameters)."""
    try:
        config = StylizeConfig(
            size=size,
            init=init,
            seed=seed,
            model=ModelConfig(weights=weights, pooling=pooling.value, device=device),
            loss=LossConfig(
                content_weight=content_weight, style_weight=style_weight, tv_weight=tv_weight
            ),
            optim=OptimConfig(optimizer=optimizer.value, steps=steps, lr=lr),
        )
    except NstError as err:
        raise _fail(str(err)) from None
    _run_stylize(content, style, output, config)


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
        config = StylizeConfig(
            size=size, model=ModelConfig(device=device), optim=OptimConfig(steps=steps)
        )
    except NstError as err:
        raise _fail(str(err)) from None
    _stderr().print(f"inputs: {content_path} + {style_path}")
    _run_stylize(content_path, style_path, output_dir / "stylized.png", config)


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


def main() -> None:
    app()
