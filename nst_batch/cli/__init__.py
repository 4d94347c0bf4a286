"""The ``nst-batch`` command line: parse, build a config, call one library function, map errors.

The typer app lives here; the commands live by concern: ``stylize`` (stylize, demo, presets,
features), ``run`` (manifests), ``watch`` (the daemon and its status), ``tools`` (weights, ONNX
export and verify, score, schema), ``video`` (video, score-video). ``options`` declares the shared
options once; ``common`` has the consoles, progress output and the one place library errors become
exit statuses."""

from __future__ import annotations

import typer

from nst_batch.cli import run, stylize, tools, video, watch
from nst_batch.version import __version__

app = typer.Typer(
    name="nst-batch",
    help="Neural style transfer (Gatys et al.) with real VGG19 weights.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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


for _name, _command in (
    ("stylize", stylize.stylize_command),
    ("presets", stylize.presets_command),
    ("features", stylize.features_command),
    ("demo", stylize.demo_command),
    ("weights", tools.weights_command),
    ("export", tools.export_command),
    ("verify", tools.verify_command),
    ("watch", watch.watch_command),
    ("status", watch.status_command),
    ("score", tools.score_command),
    ("run", run.run_command),
    ("schema", tools.schema_command),
    ("video", video.video_command),
    ("score-video", video.score_video_command),
):
    app.command(_name)(_command)


def main() -> None:
    app()
