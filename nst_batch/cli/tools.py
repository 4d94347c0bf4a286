"""The network and the results: ``weights``, ONNX ``export`` and ``verify``, and ``score``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from nst_batch.cli import options as opt
from nst_batch.cli.common import fail, mapped_errors, stderr
from nst_batch.export.model import DEFAULT_LAYERS as DEFAULT_EXPORT_LAYERS

if TYPE_CHECKING:
    from nst_batch.export import VerifyReport


Provider = opt.choices("Provider", "auto", "cpu", "cuda", "tensorrt")
PrecisionChoice = opt.choices("PrecisionChoice", "auto", "fp32", "fp16")


@mapped_errors()
def weights_command(
    weights: opt.Weights = opt.DEFAULTS.model.weights,
) -> None:
    """Load (download, decode, cache) a weights source now and print what it is."""
    from nst_batch.engine.weights import BUNDLED, default_cache_dir, load_weights, resolve_source

    loaded = load_weights(resolve_source(weights))
    print(f"source:        {loaded.source.name}")
    print(f"sha256:        {loaded.sha256}")
    print(f"preprocessing: {loaded.source.preprocessing}")
    print(f"conv layers:   {sum(k.endswith('.weight') for k in loaded.state)}")
    if loaded.source.kind == BUNDLED.kind:
        print(f"decoded cache: {default_cache_dir()}")


@mapped_errors()
def export_command(
    output: Path = typer.Option(
        Path("vgg19_features.onnx"), "--output", "-o", help="Model file (.onnx; + .onnx.data)."
    ),
    layers: str = typer.Option(
        ",".join(DEFAULT_EXPORT_LAYERS), help="Output layers; the stack ends at the deepest."
    ),
    weights: opt.Weights = opt.DEFAULTS.model.weights,
    pooling: opt.PoolingChoice = typer.Option(opt.PoolingChoice.max, help="max or avg pooling."),
    opset: int = typer.Option(17, help="ONNX opset version."),
) -> None:
    """Export the truncated VGG19 feature stack to ONNX (input `image`, one output per layer)."""
    from nst_batch.export import ExportConfig, export_onnx

    info = export_onnx(output, ExportConfig(opt.layer_names(layers), weights, pooling.value, opset))
    print(f"wrote {output} and {output}.data (onnx.checker passed)")
    print(f"layers:   {', '.join(info.layers)}")
    print(f"weights:  {info.weights_source} (sha256 {info.weights_sha256[:16]}...)")
    print(f"input:    image float32 (N, 3, H, W), RGB in [0, 1]; N, H, W dynamic; opset {opset}")


@mapped_errors()
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
    from nst_batch.export import VerifyConfig, parse_sizes, verify

    config = VerifyConfig(
        provider=providers.value,
        precision=precision.value,  # type: ignore[arg-type]
        sizes=parse_sizes(sizes),
        images=tuple(images or ()),
        weights=weights,
        trt_cache=trt_cache,
    )
    report = verify(model, config, progress=lambda line: stderr().print(line))
    _print_verify(model, report)
    if not report.ok:
        bad = sorted({c.layer for c in report.failures})
        raise fail(f"{len(report.failures)} checks out of tolerance (layers {', '.join(bad)})")
    Console(highlight=False).print("[green]all layers within tolerance[/]")


def _print_verify(model: Path, report: VerifyReport) -> None:
    """The tolerance, each (size, layer) check and the timings, as tables."""
    from rich.table import Table

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


@mapped_errors()
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
    weights: opt.Weights = opt.DEFAULTS.model.weights,
    device: opt.Device = opt.DEFAULTS.model.device,
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON on stdout."),
) -> None:
    """Style distance (relative Gram error, relu1_1..relu5_1) and content distance (relu4_2)
    of OUTPUT; 0 = perfect match. Formulas: `nst_batch.metrics`."""
    import dataclasses
    import json

    from rich.table import Table

    from nst_batch.metrics import MetricsConfig, score
    from nst_batch.params import parse_floats

    config = MetricsConfig(
        weights=weights,
        device=device,
        size=size,
        style_scale=style_scale,
        style_blend=parse_floats(style_blend) if style_blend else None,
    )
    scores = score(output, content, styles, config)
    if as_json:
        print(json.dumps(dataclasses.asdict(scores), indent=2))
        return
    table = Table("distance", "value", title=f"{output.name} ({scores.size[0]}x{scores.size[1]})")
    table.add_row("[bold]style[/] (mean)", f"[bold]{scores.style:.4f}")
    for layer, value in scores.per_layer.items():
        table.add_row(f"  style {layer}", f"{value:.4f}")
    table.add_row("[bold]content[/] (relu4_2)", f"[bold]{scores.content:.4f}")
    Console(highlight=False).print(table)


@mapped_errors()
def schema_command(
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write the schema to this file (default: standard output)."
    ),
) -> None:
    """Print the JSON Schema of a manifest row and of a watch job's NAME.json (for editors)."""
    import json

    from nst_batch.images import check_output_path, make_output_folder, write_atomic
    from nst_batch.params import row_schema

    text = json.dumps(row_schema(), indent=2) + "\n"
    if output is None:
        print(text, end="")
        return
    check_output_path(output, image=False)
    make_output_folder(output)
    write_atomic(output, text.encode())
    stderr().print(f"wrote {output}")
