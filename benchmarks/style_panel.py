"""The default look on a panel of real pairs: old vs new style-layer weights, with distances.

    python benchmarks/style_panel.py [--size 512] [--photos golden_gate,...] [--paintings ...]
        [--presets equal-layers,default] [--steps N] [--out benchmarks/results]

Stylizes every photo x painting of ../shared/images with each preset, then writes

- ``style-panel-<size>-cpu.md``: per pair and preset, the style distance (mean over
  relu1_1..relu5_1), its shallow part (relu1_1..relu3_1: texture, palette, strokes) and deep part
  (relu4_1, relu5_1: where object-level structure lives), the content distance
  (``nst_batch.metrics``, fixed equal layer weights, so presets are scored on one scale) and the
  wall time;
- ``style-panel-<size>.jpg``: one row per pair, one column per preset (outputs only).

Outputs go to ``<out>/style-panel-<size>/`` and are reused when present, so an interrupted panel
resumes where it stopped (``--fresh`` reruns everything). ``equal-layers`` is nst-batch 0.1's
default (relu1_1..relu5_1 at 0.2 each, style weight 10); ``default`` is today's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from benchmarks.report import SHARED, Report, cpu_name
from nst_batch import build_config, stylize
from nst_batch.images import open_rgb, resize_long_edge
from nst_batch.metrics import MetricsConfig, score
from nst_batch.pool import ModelPool

PHOTOS = ("golden_gate", "tubingen", "hoovertowernight")
PAINTINGS = ("woman-with-hat-matisse", "the_scream", "starry_night", "shipwreck")
PRESETS = ("equal-layers", "default")
SHALLOW = ("relu1_1", "relu2_1", "relu3_1")
DEEP = ("relu4_1", "relu5_1")
THUMB = 256  # long edge of a picture in the sheet


def run_pair(
    photo: str,
    painting: str,
    preset: str,
    size: int,
    steps: int | None,
    out_dir: Path,
    models: ModelPool,
    fresh: bool,
) -> tuple[Path, float]:
    """Stylize one pair with one preset (or reuse the output); the output and its wall time."""
    output = out_dir / f"{photo}+{painting}+{preset}.jpg"
    sidecar = output.with_suffix(".json")
    if output.is_file() and sidecar.is_file() and not fresh:
        return output, float(json.loads(sidecar.read_text())["wall_seconds"])
    config = build_config(preset, size=size, steps=steps)
    start = time.perf_counter()
    stylize(SHARED / f"{photo}.jpg", [SHARED / f"{painting}.jpg"], output, config, models=models)
    return output, time.perf_counter() - start


def sheet(rows: dict[str, list[Path | None]], labels: list[str], path: Path) -> None:
    """A grid of the outputs' thumbnails: one captioned row per pair, one column per preset
    (blank where a preset did not run). The inputs themselves stay out (they are not the
    project's to copy); rows name them."""
    thumbs = {
        pair: [resize_long_edge(open_rgb(p), THUMB) if p else None for p in ps]
        for pair, ps in rows.items()
    }
    cell_w = max(t.width for row in thumbs.values() for t in row if t)
    cell_h = max(t.height for row in thumbs.values() for t in row if t)
    caption = 16
    grid = Image.new("RGB", (cell_w * len(labels), (caption + cell_h) * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (pair, row) in enumerate(thumbs.items()):
        top = r * (caption + cell_h)
        for c, thumb in enumerate(row):
            if thumb is None:
                continue
            draw.text((c * cell_w + 4, top + 2), f"{pair}: {labels[c]}", fill="black")
            grid.paste(thumb, (c * cell_w, top + caption))
    grid.save(path, quality=88)


def side_by_side(old: Path, new: Path, labels: tuple[str, str], path: Path) -> None:
    """Two outputs at full size, captioned: the README's old-vs-new default picture."""
    a, b = open_rgb(old), open_rgb(new)
    caption, gap = 18, 8
    grid = Image.new("RGB", (a.width + gap + b.width, caption + max(a.height, b.height)), "white")
    draw = ImageDraw.Draw(grid)
    for x, image, label in ((0, a, labels[0]), (a.width + gap, b, labels[1])):
        draw.text((x + 4, 3), label, fill="black")
        grid.paste(image, (x, caption))
    grid.save(path, quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--photos", default=",".join(PHOTOS))
    parser.add_argument("--paintings", default=",".join(PAINTINGS))
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument(
        "--old-photos", help="photos the first preset runs on (default: all; the rest compare)"
    )
    parser.add_argument("--steps", type=int, help="final-level steps (default: the preset's)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--fresh", action="store_true", help="rerun pairs already done")
    parser.add_argument(
        "--existing", action="store_true", help="report the outputs made so far; run nothing"
    )
    args = parser.parse_args()
    photos, paintings = args.photos.split(","), args.paintings.split(",")
    presets = args.presets.split(",")
    old_photos = args.old_photos.split(",") if args.old_photos else photos
    out_dir = args.out / f"style-panel-{args.size}"
    out_dir.mkdir(parents=True, exist_ok=True)
    models = ModelPool()
    metrics = MetricsConfig()
    report = Report(
        f"# Style panel at {args.size} px: old vs new default style-layer weights (cpu)",
        "",
        f"- {cpu_name()}, torch {torch.__version__}; final-level steps: "
        f"{args.steps or 'the preset default'}; inputs: ../shared/images",
        "- distances from nst_batch.metrics (0 = perfect; fixed equal layer weights): style = "
        "mean relative Gram error relu1_1..relu5_1, shallow = relu1_1..relu3_1, "
        "deep = relu4_1, relu5_1; content = relu4_2",
        "",
        "| photo | painting | preset | style | shallow | deep | content | wall s |",
        "|---|---|---|---|---|---|---|---|",
    )
    rows: dict[str, list[Path | None]] = {}
    summary: dict[str, list[tuple[str, float, float, float]]] = {r: [] for r in presets}
    for photo in photos:
        for painting in paintings:
            content, style = SHARED / f"{photo}.jpg", SHARED / f"{painting}.jpg"
            row = rows.setdefault(f"{photo} + {painting}", [])
            for preset in presets:
                skipped = preset == presets[0] and photo not in old_photos and len(presets) > 1
                done = (out_dir / f"{photo}+{painting}+{preset}.json").is_file()
                if skipped or (args.existing and not done):
                    row.append(None)
                    continue
                output, wall = run_pair(
                    photo, painting, preset, args.size, args.steps, out_dir, models, args.fresh
                )
                s = score(output, content, style, metrics, models)
                shallow = statistics.mean(s.per_layer[n] for n in SHALLOW)
                deep = statistics.mean(s.per_layer[n] for n in DEEP)
                summary[preset].append((f"{photo}+{painting}", shallow, deep, s.content))
                report.add(
                    f"| {photo} | {painting} | {preset} | {s.style:.3f} | {shallow:.3f} | "
                    f"{deep:.3f} | {s.content:.3f} | {wall:.0f} |"
                )
                row.append(output)
    report.add(
        "", "| preset | pairs | mean shallow | mean deep | mean content |", "|---|---|---|---|---|"
    )
    both = set.intersection(*({v[0] for v in values} for values in summary.values()))
    for preset, values in summary.items():
        for label, chosen in (("all", values), ("both", [v for v in values if v[0] in both])):
            if not chosen or (label == "both" and len(chosen) == len(values)):
                continue
            shallow, deep, content = (
                statistics.mean(v) for v in list(zip(*chosen, strict=True))[1:]
            )
            pairs = f"{len(chosen)}" + (" (run with both presets)" if label == "both" else "")
            report.add(f"| {preset} | {pairs} | {shallow:.3f} | {deep:.3f} | {content:.3f} |")
    report.save(args.out / f"style-panel-{args.size}-cpu.md")
    rows = {pair: row for pair, row in rows.items() if any(row)}  # pairs not made yet
    sheet(rows, presets, args.out / f"style-panel-{args.size}.jpg")
    pair = rows.get("golden_gate + woman-with-hat-matisse", [])
    if len(presets) == 2 and len(pair) == 2 and all(pair):
        labels = (f"{presets[0]} (the old default)", f"{presets[1]}")
        side_by_side(pair[0], pair[1], labels, args.out / f"default-look-{args.size}.jpg")  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
