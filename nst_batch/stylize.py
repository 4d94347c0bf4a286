"""One stylization job: content + style image files in, stylized image + JSON sidecar out."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nst_batch import __version__
from nst_batch.engine.losses import LossConfig, LossTerms, compute_targets, objective
from nst_batch.engine.optimize import OptimConfig, OptimizeResult, Progress, optimize
from nst_batch.engine.vgg import Pooling, VGG19Features, load_state
from nst_batch.engine.weights import Weights, load_weights, resolve_source
from nst_batch.errors import ConfigError
from nst_batch.images import (
    check_output_path,
    open_rgb,
    resize_long_edge,
    save_image,
    to_tensor,
    write_atomic,
)

HISTORY_POINTS = 200  # loss-history samples kept in the sidecar


@dataclass(frozen=True)
class ModelConfig:
    weights: str = "bundled"  # "bundled", "torchvision" or a path to a torchvision-layout file
    pooling: Pooling = "max"
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N"
    channels_last: bool = True  # NHWC activations; measured faster on CPU (benchmarks/cpu.py)


@dataclass(frozen=True)
class StylizeConfig:
    size: int = 512  # long edge of the output, in pixels
    init: str = "content"  # "content", "noise" or a path to an image
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self) -> None:
        if not 16 <= self.size <= 8192:
            raise ConfigError(f"size must be between 16 and 8192 pixels, not {self.size}")
        for name in ("content_weight", "style_weight", "tv_weight"):
            if getattr(self.loss, name) < 0:
                raise ConfigError(f"{name} must not be negative")
        if self.loss.tv_exponent <= 0:
            raise ConfigError("tv_exponent must be positive")


@dataclass
class StylizeResult:
    image: Tensor  # (1, 3, H, W) in [0, 1], on the CPU
    optimization: OptimizeResult
    metadata: dict[str, Any]  # what the sidecar holds

    @property
    def interrupted(self) -> bool:
        return self.optimization.interrupted


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for, but torch sees no CUDA GPU; use --device cpu")
    return device


def load_model(
    config: ModelConfig, layers: tuple[str, ...], device: torch.device
) -> tuple[VGG19Features, Weights]:
    """A frozen VGG19 truncated after the deepest of ``layers``, on ``device``."""
    weights = load_weights(resolve_source(config.weights))
    model = VGG19Features(
        layers, weights.source.normalization, config.pooling, config.channels_last
    )
    try:
        load_state(model, weights.state, source=weights.source.name)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    model.requires_grad_(False)  # only the image is optimized: skip weight gradients
    return model.eval().to(device), weights


def initial_image(init: str, content: Tensor, seed: int) -> Tensor:
    """The optimization's starting point, shaped like ``content`` (1, 3, H, W)."""
    if init == "content":
        return content.clone()
    if init == "noise":
        generator = torch.Generator().manual_seed(seed)  # local: no global RNG state touched
        return torch.rand(content.shape, generator=generator).to(content.device)
    h, w = content.shape[-2:]
    img = open_rgb(Path(init)).resize((w, h))
    return to_tensor(img).to(content.device)


def stylize_tensors(
    content: Tensor,
    style: Tensor,
    config: StylizeConfig,
    model: VGG19Features,
    progress: Callable[[Progress], None] | None = None,
) -> OptimizeResult:
    """Optimize an image (1, 3, H, W) like ``content`` towards ``style``'s Gram statistics."""
    device = next(model.parameters()).device
    content, style = content.to(device), style.to(device)
    with torch.no_grad():
        targets = compute_targets(model(content), model(style), config.loss)

    def loss_fn(x: Tensor) -> LossTerms:
        return objective(x, model(x), targets, config.loss)

    init = initial_image(config.init, content, config.seed)
    return optimize(init, loss_fn, config.optim, progress)


def sidecar_path(output: Path) -> Path:
    return output.with_suffix(".json")


def stylize(
    content_path: Path,
    style_path: Path,
    output_path: Path,
    config: StylizeConfig,
    progress: Callable[[Progress], None] | None = None,
) -> StylizeResult:
    """Stylize one pair of files and write ``output_path`` and its ``.json`` sidecar atomically.

    Inputs are checked and decoded before the model loads, so bad input fails in a second, not
    after a long run. Interrupted (Ctrl-C) runs still write the best image so far, flagged in the
    sidecar, and return with ``result.interrupted``.
    """
    wall_start = time.perf_counter()
    output_path = Path(output_path)
    check_output_path(output_path)
    if config.init not in ("content", "noise"):
        open_rgb(Path(config.init))  # fail now on a bad init image
    content_img, style_img = open_rgb(Path(content_path)), open_rgb(Path(style_path))
    content_small = resize_long_edge(content_img, config.size)
    style_small = resize_long_edge(style_img, config.size)
    device = resolve_device(config.model.device)
    model, weights = load_model(config.model, config.loss.layers, device)

    result = stylize_tensors(
        to_tensor(content_small), to_tensor(style_small), config, model, progress
    )
    image = result.image.cpu()
    save_image(image, output_path)
    metadata = _metadata(
        config=config,
        weights=weights,
        device=device,
        inputs={
            "content": (Path(content_path), content_img.size, content_small.size),
            "style": (Path(style_path), style_img.size, style_small.size),
        },
        output_path=output_path,
        result=result,
        wall_seconds=time.perf_counter() - wall_start,
    )
    write_atomic(sidecar_path(output_path), json.dumps(metadata, indent=2).encode() + b"\n")
    return StylizeResult(image=image, optimization=result, metadata=metadata)


def _metadata(
    *,
    config: StylizeConfig,
    weights: Weights,
    device: torch.device,
    inputs: dict[str, tuple[Path, tuple[int, int], tuple[int, int]]],
    output_path: Path,
    result: OptimizeResult,
    wall_seconds: float,
) -> dict[str, Any]:
    history = result.history
    stride = max(1, -(-len(history) // HISTORY_POINTS))
    sampled = history[::stride]
    if history and sampled[-1] is not history[-1]:
        sampled.append(history[-1])
    last = history[-1] if history else None
    return {
        "nst_batch_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": {
            role: {"path": str(path), "original_size": list(orig), "size": list(size)}
            for role, (path, orig, size) in inputs.items()
        },
        "output": {"path": str(output_path), "size": list(result.image.shape[-1:-3:-1])},
        "parameters": dataclasses.asdict(config),
        "weights": {
            "source": weights.source.name,
            "sha256": weights.sha256,
            "preprocessing": weights.source.preprocessing,
        },
        "device": str(device),
        "torch_version": torch.__version__,
        "wall_seconds": round(wall_seconds, 3),
        "optimize_seconds": round(result.elapsed, 3),
        "seconds_per_iteration": round(result.elapsed / result.steps, 5) if result.steps else None,
        "steps_completed": result.steps,
        "interrupted": result.interrupted,
        "final_loss": {
            "total": result.loss,
            "content": last.content if last else None,
            "style": last.style if last else None,
            "tv": last.tv if last else None,
        },
        "loss_history": [
            {"step": p.step, "loss": p.loss, "content": p.content, "style": p.style, "tv": p.tv}
            for p in sampled
        ],
    }
