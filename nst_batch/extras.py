"""Files a job writes besides its image: snapshots, a contact sheet, a loss-curve plot."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from nst_batch.config import StylizeConfig
from nst_batch.engine.optimize import Progress
from nst_batch.images import save_image, save_pil, to_pil, write_atomic

GAP = 8  # pixels between panels


def snapshot_path(output: Path, step: int) -> Path:
    """``out.png`` -> ``out.0050.png``: numbered beside the output, same format."""
    return output.with_name(f"{output.stem}.{step:04d}{output.suffix}")


def snapshot_writer(output: Path, every: int) -> Callable[[Progress], None] | None:
    """A progress callback that saves the current iterate every ``every`` steps (0: none)."""
    if every <= 0:
        return None

    def write(p: Progress) -> None:
        if p.step % every == 0 and p.image is not None:
            save_image(p.image.detach().cpu(), snapshot_path(output, p.step))

    return write


def caption(config: StylizeConfig) -> str:
    loss, optim = config.loss, config.optim
    parts = [
        f"preset {config.preset}",
        f"{config.size}px",
        f"content {loss.content_weight:g} @ {','.join(n for n, _ in loss.content_layers)}",
        f"style {loss.style_weight:g}",
        f"tv {loss.tv_weight:g}",
        f"{optim.optimizer} {optim.steps} steps",
        f"scales {'x'.join(str(s) for s in config.pyramid())}",
        f"init {config.init if config.init in ('content', 'noise') else 'file'}",
        f"seed {config.seed}",
        f"weights {config.model.weights}",
    ]
    if config.style_scale != 1:
        parts.append(f"style scale {config.style_scale:g}")
    if config.preserve_colors:
        parts.append("colours kept")
    return "  |  ".join(parts)


def write_sheet(
    output: Path,
    content: Image.Image,
    styles: Sequence[Image.Image],
    result: Tensor,
    config: StylizeConfig,
) -> Path:
    """``OUT.sheet.png``: content | style(s) | result at one height, a caption line below."""
    stylized = to_pil(result)
    height = stylized.height
    panels = [_fit_height(img, height) for img in (content, *styles)] + [stylized]
    font = ImageFont.load_default(size=max(11, height // 28))
    text = caption(config)
    width = sum(p.width for p in panels) + GAP * (len(panels) + 1)
    line_height = font.getbbox("Ag")[3] + GAP
    lines = _wrap(text, font, width - 2 * GAP)
    sheet = Image.new("RGB", (width, height + 2 * GAP + line_height * len(lines)), "white")
    x = GAP
    for panel in panels:
        sheet.paste(panel, (x, GAP))
        x += panel.width + GAP
    draw = ImageDraw.Draw(sheet)
    for i, line in enumerate(lines):
        draw.text((GAP, height + GAP + GAP // 2 + i * line_height), line, fill="black", font=font)
    path = output.with_name(f"{output.stem}.sheet.png")
    save_pil(sheet, path)
    return path


def _fit_height(img: Image.Image, height: int) -> Image.Image:
    width = max(1, round(img.width * height / img.height))
    return img.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)


def _wrap(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> list[str]:
    lines: list[str] = []
    for part in text.split("  |  "):
        if lines and font.getlength(lines[-1] + "  |  " + part) <= width:
            lines[-1] += "  |  " + part
        else:
            lines.append(part)
    return lines


def loss_plot(output: Path, history: Sequence[Progress]) -> Path | None:
    """``OUT.loss.png``: the weighted loss terms per step (log scale); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    steps = [p.step for p in history]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for name in ("loss", "content", "style", "tv"):
        values = [getattr(p, name) for p in history]
        if any(v > 0 for v in values):
            ax.plot(steps, values, label="total" if name == "loss" else name)
    for level in sorted({p.scale for p in history})[1:]:
        first = next(p.step for p in history if p.scale == level)
        ax.axvline(first, color="grey", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("weighted loss")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path = output.with_name(f"{output.stem}.loss.png")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(path, buf.getvalue())
    return path
