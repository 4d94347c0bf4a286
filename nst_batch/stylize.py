"""One stylization job: content + style image files in, stylized image + JSON sidecar out."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from nst_batch import __version__
from nst_batch.color import preserve_colors
from nst_batch.engine.graphs import (
    Precision,
    check_precision,
    features_at,
    precision_context,
    resolve_precision,
)
from nst_batch.engine.losses import (
    LossConfig,
    LossTerms,
    Targets,
    compute_targets,
    objective_weights,
    stack_targets,
    weighted_terms,
)
from nst_batch.engine.optimize import (
    CUDA_SYNC_EVERY,
    OptimConfig,
    OptimizeResult,
    Progress,
    optimize,
)
from nst_batch.engine.vgg import LAYER_INDEX, LAYERS, Pooling, VGG19Features, load_state
from nst_batch.engine.weights import Weights, load_weights, resolve_source, sha256_file
from nst_batch.errors import ConfigError, NstError
from nst_batch.images import (
    check_not_inputs,
    check_output_path,
    make_output_folder,
    open_rgb,
    resize_long_edge,
    resized_shape,
    save_image,
    to_tensor,
    write_atomic,
)
from nst_batch.presets import get_preset, override

HISTORY_POINTS = 200  # loss-history samples kept in the sidecar
# Targets backend per device for targets_backend="auto": ONNX Runtime's CPU forward pass takes
# 0.65-0.71x torch's time (benchmarks/results/targets-cpu.md); on CUDA torch (not yet measured).
AUTO_TARGETS_BACKEND = {"cpu": "onnx", "cuda": "torch"}
AUTO_SCALES_FROM = 384  # outputs at least this large are optimized coarse to fine by default
SMALLEST_SCALE = 128  # the coarsest scale's long edge is at least this
# With a time budget (max_seconds) each coarser pyramid level runs at least this many steps (or
# all its steps when it has fewer) before its share of the budget can stop it: a level of one or
# two L-BFGS steps is wasted time (its upsampled result is barely a start). The final level gets
# whatever time is left.
MIN_LEVEL_STEPS = 20
# What users of other tools call the init images (neural-style's -init random|image).
INIT_ALIASES = {"random": "noise", "image": "content"}
DEVICE_TYPES = ("cpu", "cuda", "mps")


@dataclass(frozen=True)
class ModelConfig:
    weights: str = "bundled"  # "bundled", "torchvision" or a path to a torchvision-layout file
    pooling: Pooling = "max"
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N"
    channels_last: bool = True  # NHWC activations; measured faster on CPU (benchmarks/cpu.py)
    targets_backend: str = "auto"  # "torch", "onnx" (ONNX Runtime) or "auto" (per device)
    # "auto" (bf16 where the hardware has it natively, else fp32), "fp32", "tf32" (CUDA
    # convolutions) or "bf16" (autocast for the convolutions; Grams and losses in float32)
    precision: Precision = "auto"
    cuda_graphs: bool = True  # replay the evaluation as a CUDA graph on CUDA

    def __post_init__(self) -> None:
        check_precision(self.precision)
        check_device_name(self.device)


def check_device_name(name: str) -> None:
    """Refuse device names other than auto, cpu, cuda[:N] and mps (availability is checked by
    :func:`resolve_device` where the job runs)."""
    if name == "auto":
        return
    try:
        kind = torch.device(name).type
    except (RuntimeError, TypeError):
        kind = ""
    if kind not in DEVICE_TYPES:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")


def check_style_settings(style_scale: float, style_blend: tuple[float, ...] | None) -> None:
    if not 0.05 <= style_scale <= 8:
        raise ConfigError(f"style_scale must be between 0.05 and 8, not {style_scale}")
    if style_blend is None:
        return
    if not style_blend or min(style_blend) < 0:
        raise ConfigError(f"style_blend needs non-negative weights, not {style_blend}")
    if sum(style_blend) <= 0:
        raise ConfigError(f"style_blend {style_blend}: at least one weight must be positive")


def style_long_edge(style_scale: float, long_edge: int) -> int:
    """Long edge the style images are used at when the output's is ``long_edge``."""
    return max(16, round(style_scale * long_edge))


@dataclass(frozen=True)
class StylizeConfig:
    size: int = 512  # long edge of the output, in pixels
    init: str = "content"  # "content", "noise" or a path to an image
    seed: int = 0
    preset: str = "default"  # the recipe these settings started from (for the record)
    style_blend: tuple[float, ...] | None = None  # one weight per style image; None = equal
    style_scale: float = 1.0  # style image long edge, relative to the output's (at each scale)
    preserve_colors: bool = False  # keep the output's luminance with the content's chroma
    scales: int | None = None  # coarse-to-fine pyramid levels; None = auto (on from 384 px)
    scale_steps: int | None = None  # iterations at each coarser scale; None = half of steps
    # refuse input images with more pixels (decompression bombs); None = Pillow's limit (89.5 MP)
    max_pixels: int | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self) -> None:
        if not 16 <= self.size <= 8192:
            raise ConfigError(f"size must be between 16 and 8192 pixels, not {self.size}")
        check_style_settings(self.style_scale, self.style_blend)
        if self.scales is not None and not 1 <= self.scales <= 6:
            raise ConfigError(f"scales must be between 1 and 6, not {self.scales}")
        if self.scale_steps is not None and self.scale_steps < 1:
            raise ConfigError(f"scale_steps must be at least 1, not {self.scale_steps}")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise ConfigError(f"max_pixels must be at least 1, not {self.max_pixels}")
        if not self.init.strip():
            raise ConfigError("init must be content, noise or an image path, not empty")
        if self.init in INIT_ALIASES:  # canonical name, so hashes and sidecars agree
            object.__setattr__(self, "init", INIT_ALIASES[self.init])

    def pyramid(self) -> tuple[int, ...]:
        """Long edge of each scale, coarse to fine, ending at ``size``."""
        if self.scales is None:
            n = 1
            if self.size >= AUTO_SCALES_FROM:
                while self.size // 2**n >= SMALLEST_SCALE:
                    n += 1
        else:
            n = self.scales
        return tuple(max(16, round(self.size / 2**k)) for k in reversed(range(n)))

    def style_edge(self, long_edge: int) -> int:
        """Long edge of the style images when the output's is ``long_edge``."""
        return style_long_edge(self.style_scale, long_edge)

    def steps_at(self, scale_index: int, n_scales: int) -> int:
        if scale_index == n_scales - 1:
            return self.optim.steps
        return self.scale_steps or max(1, self.optim.steps // 2)


def build_config(preset: str = "default", **overrides: Any) -> StylizeConfig:
    """A preset's config with flat overrides (``steps=100, style_weight=30, pooling="avg"``).

    ``None`` values are ignored, so callers can pass every option they parsed.
    """
    p = get_preset(preset)
    base = StylizeConfig(
        preset=p.name, init=p.init, model=ModelConfig(pooling=p.pooling), loss=p.loss, optim=p.optim
    )
    return override(base, {k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class OutputConfig:
    """What a job writes besides the image and its sidecar."""

    save_every: int = 0  # also save the iterate every N steps as OUT.<step>.EXT; 0 = never
    sheet: bool = False  # OUT.sheet.png (content | styles | result) and OUT.loss.png

    def __post_init__(self) -> None:
        if self.save_every < 0:
            raise ConfigError(f"save_every must not be negative (0 = off), not {self.save_every}")


@dataclass
class StylizeResult:
    image: Tensor  # (1, 3, H, W) in [0, 1], on the CPU
    optimization: OptimizeResult
    metadata: dict[str, Any]  # what the sidecar holds

    @property
    def interrupted(self) -> bool:
        return self.optimization.interrupted


def resolve_device(name: str) -> torch.device:
    """The torch device for a name; ConfigError for an unknown one or one this machine lacks."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device_name(name)
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for, but torch sees no CUDA GPU; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r}: torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            "device 'mps' asked for, but this torch build or machine has no MPS (Apple GPU); "
            "use --device cpu"
        )
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


class ModelPool:
    """Loaded feature stacks by (model settings, layers, device), so a process that runs many jobs
    loads and decodes the weights once. Owned and passed explicitly by the batch front ends.

    With ``check_onnx`` (an nst-batch ONNX export), every model configuration is checked against
    it the first time it is loaded (:func:`nst_batch.export.check_engine_parity`): a corrupt
    weights file or a broken device raises ParityError before any job runs.
    """

    def __init__(self, check_onnx: Path | None = None) -> None:
        self.check_onnx = Path(check_onnx) if check_onnx else None
        self._models: dict[tuple[Any, ...], tuple[VGG19Features, Weights]] = {}
        self._checked: set[tuple[Any, ...]] = set()
        self._onnx: dict[tuple[Any, ...], Callable[[Tensor], dict[str, Tensor]]] = {}

    def get(
        self, config: ModelConfig, layers: tuple[str, ...], device: torch.device
    ) -> tuple[VGG19Features, Weights]:
        if self.check_onnx is not None and (config, str(device)) not in self._checked:
            self.check(config, device)
        return self._load(config, layers, device)

    def _load(
        self, config: ModelConfig, layers: tuple[str, ...], device: torch.device
    ) -> tuple[VGG19Features, Weights]:
        key = (config, tuple(layers), str(device))
        if key not in self._models:
            self._models[key] = load_model(config, layers, device)
        return self._models[key]

    def check(self, config: ModelConfig, device: torch.device) -> list[Any]:
        """Compare this configuration's features with the ONNX export; the per-layer checks."""
        from nst_batch.export import check_engine_parity, read_info

        assert self.check_onnx is not None
        key = (config, str(device))
        info = read_info(self.check_onnx)
        model, weights = self._load(config, info.layers, device)
        checks = check_engine_parity(
            self.check_onnx, model, weights.sha256, weights.source.name, config.pooling
        )
        self._checked.add(key)
        return checks

    def targets(
        self, config: ModelConfig, layers: tuple[str, ...], device: torch.device
    ) -> Callable[[Tensor], dict[str, Tensor]]:
        """The forward pass that computes style/content targets: the torch model, or the same
        stack exported to ONNX (cached beside the decoded weights) in ONNX Runtime."""
        model, weights = self.get(config, layers, device)
        backend = resolve_targets_backend(config.targets_backend, device)
        if backend == "torch":
            return model
        key = (config.weights, config.pooling, tuple(layers), str(device))
        if key not in self._onnx:
            try:
                self._onnx[key] = _onnx_targets(config, layers, model, weights, device)
            except (ImportError, OSError, NstError):
                if config.targets_backend != "auto":
                    raise
                self._onnx[key] = model  # "auto" only prefers ONNX; torch gives the same numbers
        return self._onnx[key]


def resolve_targets_backend(name: str, device: torch.device) -> str:
    if name == "auto":
        return AUTO_TARGETS_BACKEND.get(device.type, "torch")
    if name not in ("torch", "onnx"):
        raise ConfigError(f"targets_backend must be auto, torch or onnx, not {name!r}")
    return name


def _onnx_targets(
    config: ModelConfig,
    layers: tuple[str, ...],
    model: VGG19Features,
    weights: Weights,
    device: torch.device,
) -> Callable[[Tensor], dict[str, Tensor]]:
    from nst_batch.engine.weights import default_cache_dir
    from nst_batch.export import (
        ExportConfig,
        OnnxFeatures,
        SessionConfig,
        check_engine_parity,
        export_onnx,
    )

    folder = default_cache_dir() / "onnx"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{weights.sha256[:16]}-{config.pooling}-{'-'.join(layers)}.onnx"
    fresh = not path.is_file() or not Path(f"{path}.data").is_file()
    while True:
        if fresh:
            export_onnx(path, ExportConfig(layers, config.weights, config.pooling))
        try:
            # A cached file could have rotted since it was written: a quick probe decides.
            check_engine_parity(path, model, weights.sha256, weights.source.name, config.pooling)
            break
        except NstError:
            if fresh:
                raise
            fresh = True
    provider = "cuda" if device.type == "cuda" else "cpu"
    session = OnnxFeatures(path, SessionConfig(provider))

    def features(image: Tensor) -> dict[str, Tensor]:  # (B, 3, H, W) -> {layer: (B, C, h, w)}
        return {k: v.to(device) for k, v in session(image).items()}

    return features


def parameter_hash(content: Path, styles: Sequence[Path], config: StylizeConfig) -> str:
    """What makes a result: the inputs' bytes and every setting except the device it ran on.

    A job whose sidecar records the same hash need not run again; a changed input file or setting
    changes the hash. The device is left out so work done on one machine counts on another.
    """
    settings = dataclasses.asdict(config)
    for name in ("device", "targets_backend", "cuda_graphs"):  # same numbers however computed
        settings["model"].pop(name)
    settings.pop("max_pixels")  # which inputs are accepted, not what is made of them
    settings["optim"].pop("sync_every")  # when the host reads losses, not what they are
    record = {
        "content": sha256_file(Path(content)),
        "styles": [sha256_file(Path(s)) for s in styles],
        "settings": settings,
    }
    text = json.dumps(record, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def initial_image(init: str, content: Tensor, seed: int, max_pixels: int | None = None) -> Tensor:
    """The optimization's starting point, shaped like ``content`` (1, 3, H, W)."""
    if init == "content":
        return content.clone()
    if init == "noise":
        generator = torch.Generator().manual_seed(seed)  # local: no global RNG state touched
        return torch.rand(content.shape, generator=generator).to(content)
    h, w = content.shape[-2:]
    img = open_rgb(Path(init), max_pixels).resize((w, h))
    return to_tensor(img).to(content)


def resize_to(image: Tensor, long_edge: int) -> Tensor:
    """Resize (B, 3, H, W) so its long edge is ``long_edge``, antialiased."""
    h, w = image.shape[-2:]
    new_w, new_h = resized_shape((w, h), long_edge)
    if (new_h, new_w) == (h, w):
        return image
    return F.interpolate(image, size=(new_h, new_w), mode="bicubic", antialias=True).clamp(0, 1)


def batch_key(config: StylizeConfig) -> tuple[Any, ...]:
    """Jobs whose configs share this key, with content images of the same shape at the output
    size, can be optimized as one batch: they differ only in weights, styles, init and colours."""
    loss = config.loss
    return (
        config.size,
        config.pyramid(),
        config.scale_steps,
        config.model,
        dataclasses.replace(config.optim, sync_every=None),
        tuple(n for n, _ in loss.content_layers),
        tuple(n for n, _ in loss.style_layers),
        loss.normalization,
        loss.tv_kind,
        loss.tv_exponent,
    )


def stylize_tensors(
    content: Tensor,
    styles: Tensor | Sequence[Tensor],
    config: StylizeConfig,
    model: VGG19Features,
    progress: Callable[[Progress], None] | None = None,
    target_model: Callable[[Tensor], dict[str, Tensor]] | None = None,
) -> OptimizeResult:
    """Optimize an image shaped like ``content`` (1, 3, H, W) towards the styles' Gram statistics.

    ``content`` is at the output size; each style image (1, 3, h, w) at any size is resized to
    ``style_scale`` times the output's long edge. With several scales the image is optimized at
    each size of :meth:`StylizeConfig.pyramid` in turn, the result of one upsampled as the start
    of the next, with targets taken anew at every size. Steps in the reported progress count
    across all scales. ``target_model`` computes the targets (forward only) when given, e.g.
    the ONNX Runtime copy of ``model``; the optimization always differentiates ``model``.
    """
    styles = [styles] if isinstance(styles, Tensor) else list(styles)
    return stylize_batch_tensors([content], [styles], [config], model, progress, target_model)


def stylize_batch_tensors(
    contents: Sequence[Tensor],
    styles: Sequence[Sequence[Tensor]],
    configs: Sequence[StylizeConfig],
    model: VGG19Features,
    progress: Callable[[Progress], None] | None = None,
    target_model: Callable[[Tensor], dict[str, Tensor]] | None = None,
    cancel_check: Callable[[], None] | None = None,
) -> OptimizeResult:
    """:func:`stylize_tensors` for several jobs optimized as one (B, 3, H, W) batch.

    Each job has its content (1, 3, H, W) (all the same shape), its style images and its config
    (all with the same :func:`batch_key`); targets and weights are per job, and each job's path
    is the one it takes alone. The result's image is (B, 3, H, W), its ``losses`` per job.
    ``cancel_check`` runs before each level's targets and each step (see ``optimize``).
    """
    keys = {batch_key(c) for c in configs}
    shapes = {tuple(c.shape[-2:]) for c in contents}
    if len(keys) > 1 or len(shapes) > 1:
        raise ConfigError("jobs batched together need the same size, layers and optimizer")
    config = configs[0]  # what all jobs share
    device = next(model.parameters()).device
    features = target_model or model
    precision = resolve_precision(config.model.precision, device)
    differentiable = features_at(model, precision)
    content = torch.cat([c.to(device) for c in contents])  # (B, 3, H, W)
    pyramid = config.pyramid()
    steps = [config.steps_at(i, len(pyramid)) for i in range(len(pyramid))]
    # Time budget shares follow each scale's cost (pixels x steps).
    costs = [s * s * n for s, n in zip(pyramid, steps, strict=True)]
    start = time.perf_counter()
    offset, history = 0, []
    failures = [""] * len(configs)  # per job: why its optimization failed, at the first bad level
    image: Tensor | None = None
    result: OptimizeResult | None = None
    weights = objective_weights([c.loss for c in configs], device, content.dtype)
    for i, long_edge in enumerate(pyramid):
        if cancel_check is not None:
            cancel_check()
        level_content = resize_to(content, long_edge)
        with torch.no_grad():
            targets = stack_targets(
                [
                    _targets(features, level_content[j : j + 1], styles[j], c, long_edge)
                    for j, c in enumerate(configs)
                ]
            )

        def loss_fn(x: Tensor, targets: Any = targets) -> LossTerms:
            return weighted_terms(x, differentiable(x), targets, weights)

        if image is None:
            init = torch.cat(
                [
                    initial_image(c.init, level_content[j : j + 1], c.seed, c.max_pixels)
                    for j, c in enumerate(configs)
                ]
            )
        else:
            init = F.interpolate(image, size=level_content.shape[-2:], mode="bicubic")
        optim = config.optim
        final = i == len(pyramid) - 1
        if optim.max_seconds is not None:
            # Each level's share of the time left follows its cost (pixels x steps); a coarser
            # level still runs MIN_LEVEL_STEPS steps when its share runs out sooner.
            left = optim.max_seconds - (time.perf_counter() - start)
            share = costs[i] / sum(costs[i:])
            optim = dataclasses.replace(optim, max_seconds=max(left * share, 1e-3))
        optim = dataclasses.replace(optim, steps=steps[i])
        min_steps = 0 if final else min(MIN_LEVEL_STEPS, steps[i])
        level_start = time.perf_counter()

        def globally(
            p: Progress, level: int = i, offset: int = offset, level_start: float = level_start
        ) -> Progress:
            # Steps and seconds count across the whole pyramid.
            elapsed = p.elapsed + (level_start - start)
            return dataclasses.replace(
                p, step=offset + p.step, total=sum(steps), elapsed=elapsed, scale=level
            )

        def report(p: Progress, globally: Callable[[Progress], Progress] = globally) -> None:
            if progress is not None:
                progress(globally(p))

        with precision_context(precision, device):
            result = optimize(
                init,
                loss_fn,
                optim,
                report,
                graphs=config.model.cuda_graphs,
                cancel_check=cancel_check,
                min_steps=min_steps,
            )
        history += [dataclasses.replace(globally(p), image=None) for p in result.history]
        where = f"at {long_edge} px: " if len(pyramid) > 1 else ""
        level = result.failures or ("",) * len(configs)  # empty when no step ran
        failures = [old or (new and where + new) for old, new in zip(failures, level, strict=True)]
        offset += steps[i]
        image = result.image
        # A coarse level that used up its share of the time budget hands over to the next
        # (which gets what is left); only Ctrl-C ends the pyramid early.
        if result.stop_reason == "interrupted":
            break
    assert result is not None and image is not None
    if image.shape[-2:] != content.shape[-2:]:  # stopped at a coarse scale
        image = F.interpolate(image, size=content.shape[-2:], mode="bicubic").clamp(0, 1)
    image = torch.cat(
        [
            preserve_colors(image[j : j + 1], content[j : j + 1])
            if c.preserve_colors
            else image[j : j + 1]
            for j, c in enumerate(configs)
        ]
    )
    return dataclasses.replace(
        result,
        image=image,
        steps=len(history),
        elapsed=time.perf_counter() - start,
        history=history,
        failures=tuple(failures) if result.failures else (),
    )


def _targets(
    features: Callable[[Tensor], dict[str, Tensor]],
    content: Tensor,
    styles: Sequence[Tensor],
    config: StylizeConfig,
    long_edge: int,
) -> Targets:
    """One job's targets at one pyramid level: content (1, 3, H, W) already at that level."""
    device = content.device
    style_edge = config.style_edge(long_edge)
    return compute_targets(
        features(content),
        [features(resize_to(s.to(device), style_edge)) for s in styles],
        config.loss,
        config.style_blend,
    )


def sidecar_path(output: Path) -> Path:
    return output.with_suffix(".json")


@dataclass
class JobInputs:
    """One job's decoded inputs and where its results go."""

    content_path: Path
    style_paths: list[Path]
    output_path: Path
    config: StylizeConfig
    outputs: OutputConfig
    content_img: Image.Image
    style_imgs: list[Image.Image]
    content_small: Image.Image  # at the output size


def read_inputs(
    content_path: Path,
    style_paths: Path | Sequence[Path],
    output_path: Path,
    config: StylizeConfig,
    outputs: OutputConfig | None = None,
) -> JobInputs:
    """Check and decode a job's inputs before any model work, so bad input fails in a second."""
    output_path = Path(output_path)
    paths = [Path(style_paths)] if isinstance(style_paths, (str, Path)) else list(style_paths)
    check_output_path(output_path)
    if not paths:
        raise ConfigError("at least one style image is needed")
    if config.style_blend is not None and len(config.style_blend) != len(paths):
        raise ConfigError(
            f"style_blend has {len(config.style_blend)} weights for {len(paths)} style images"
        )
    inputs = [Path(content_path), *paths]
    if config.init not in ("content", "noise"):
        if not Path(config.init).exists():
            raise ConfigError(
                f"init {config.init!r} is not content, noise (or random) or an image file"
            )
        open_rgb(Path(config.init), config.max_pixels)  # fail now on a bad init image
        inputs.append(Path(config.init))
    check_not_inputs([output_path, sidecar_path(output_path)], inputs)
    content_img = open_rgb(Path(content_path), config.max_pixels)
    style_imgs = [open_rgb(p, config.max_pixels) for p in paths]
    content_small = resize_long_edge(content_img, config.size)
    check_fits(config, content_small.size, [img.size for img in style_imgs])
    make_output_folder(output_path)  # as ``run`` does; checked writable above
    return JobInputs(
        content_path=Path(content_path),
        style_paths=paths,
        output_path=output_path,
        config=config,
        outputs=outputs or OutputConfig(),
        content_img=content_img,
        style_imgs=style_imgs,
        content_small=content_small,
    )


def check_fits(
    config: StylizeConfig, output: tuple[int, int], styles: Sequence[tuple[int, int]]
) -> None:
    """Refuse images whose short edge, at some pyramid level, is smaller than the deepest layer
    needs (each pooling halves it: relu5_1 needs 16 px), instead of failing inside the network."""
    deepest = max(config.loss.layers, key=lambda n: LAYER_INDEX[n])
    pools = sum(1 for spec in LAYERS[: LAYER_INDEX[deepest]] if spec.kind == "pool")
    need = 2**pools
    for edge in config.pyramid():
        w, h = resized_shape(output, edge)
        if min(w, h) < need:
            raise ConfigError(
                f"the output would be {w}x{h} px at the {edge} px scale; layer {deepest} needs "
                f"a short edge of at least {need} px: use a larger size, fewer scales or a less "
                "elongated content image"
            )
        style_edge = config.style_edge(edge)
        for w, h in styles:
            if min(resized_shape((w, h), style_edge)) < need:
                raise ConfigError(
                    f"a {w}x{h} style image is too elongated for a {style_edge} px style size "
                    f"(layer {deepest} needs a short edge of at least {need} px)"
                )


def _progress_fanout(
    jobs: Sequence[JobInputs], progress: Callable[[Progress], None] | None
) -> Callable[[Progress], None]:
    """The loop's callback: the caller's progress (whole batch), and each job's snapshots."""
    from nst_batch.sheet import snapshot_writer

    writers = [snapshot_writer(j.output_path, j.outputs.save_every) for j in jobs]

    def report(p: Progress) -> None:
        if progress is not None:
            progress(p)
        for i, write in enumerate(writers):
            if write is not None:
                write(p.job(i) if len(writers) > 1 else p)

    return report


def _sync_for_snapshots(jobs: Sequence[JobInputs], config: StylizeConfig) -> StylizeConfig:
    """Snapshots need the image on the host at their steps: read back at least that often."""
    every = [j.outputs.save_every for j in jobs if j.outputs.save_every]
    if not every or config.optim.sync_every is not None:
        return config
    sync = math.gcd(CUDA_SYNC_EVERY, *every)
    return dataclasses.replace(config, optim=dataclasses.replace(config.optim, sync_every=sync))


def _write_result(
    job: JobInputs,
    image: Tensor,
    result: OptimizeResult,
    weights: Weights,
    device: torch.device,
    wall_seconds: float,
) -> StylizeResult:
    """Write one job's image, extras and sidecar (last: a sidecar marks a finished job)."""
    from nst_batch.sheet import loss_plot, write_sheet

    config, outputs, output_path = job.config, job.outputs, job.output_path
    save_image(image, output_path)
    extra_files: dict[str, str] = {}
    if outputs.sheet:
        extra_files["sheet"] = str(
            write_sheet(output_path, job.content_small, job.style_imgs, image, config)
        )
        plot = loss_plot(output_path, result.history)
        extra_files["loss_plot"] = str(plot) if plot else "skipped: matplotlib is not installed"
    metadata = _metadata(
        config=config,
        weights=weights,
        device=device,
        inputs={
            "content": [(job.content_path, job.content_img.size, job.content_small.size)],
            "styles": [
                (p, img.size, _style_size(img.size, job.content_small.size, config))
                for p, img in zip(job.style_paths, job.style_imgs, strict=True)
            ],
        },
        output_path=output_path,
        result=result,
        wall_seconds=wall_seconds,
    )
    metadata["files"] = extra_files
    metadata["parameter_hash"] = parameter_hash(job.content_path, job.style_paths, config)
    write_atomic(sidecar_path(output_path), json.dumps(metadata, indent=2).encode() + b"\n")
    return StylizeResult(image=image, optimization=result, metadata=metadata)


def stylize(
    content_path: Path,
    style_paths: Path | Sequence[Path],
    output_path: Path,
    config: StylizeConfig,
    progress: Callable[[Progress], None] | None = None,
    outputs: OutputConfig | None = None,
    models: ModelPool | None = None,
    keep_interrupted: bool = True,
    cancel_check: Callable[[], None] | None = None,
) -> StylizeResult:
    """Stylize one content file with one or more style files; write the image and its sidecar.

    Inputs are checked and decoded before the model loads, so bad input fails in a second, not
    after a long run. Interrupted (Ctrl-C) runs still write the best image so far, flagged in the
    sidecar, and return with ``result.interrupted``; with ``keep_interrupted=False`` (batch runs)
    nothing is written and KeyboardInterrupt propagates. An exception raised by ``progress``
    aborts the run and propagates, writing nothing; so does one raised by ``cancel_check``,
    which runs before every step (how a daemon cancels a job).
    """
    job = read_inputs(content_path, style_paths, output_path, config, outputs)
    return stylize_batch([job], progress, models, keep_interrupted, cancel_check)[0]


def stylize_batch(
    jobs: Sequence[JobInputs],
    progress: Callable[[Progress], None] | None = None,
    models: ModelPool | None = None,
    keep_interrupted: bool = True,
    cancel_check: Callable[[], None] | None = None,
) -> list[StylizeResult]:
    """Run jobs (from :func:`read_inputs`) with one :func:`batch_key` and same-shaped content
    as one batch; write each job's image and sidecar. ``progress`` sees the whole batch."""
    wall_start = time.perf_counter()
    config = _sync_for_snapshots(jobs, jobs[0].config)
    device = resolve_device(config.model.device)
    models = models or ModelPool()
    model, weights = models.get(config.model, config.loss.layers, device)
    targets = models.targets(config.model, config.loss.layers, device)
    configs = [dataclasses.replace(j.config, optim=config.optim) for j in jobs]
    result = stylize_batch_tensors(
        [to_tensor(j.content_small) for j in jobs],
        [[to_tensor(img) for img in j.style_imgs] for j in jobs],
        configs,
        model,
        _progress_fanout(jobs, progress),
        target_model=targets,
        cancel_check=cancel_check,
    )
    if result.interrupted and not keep_interrupted:
        raise KeyboardInterrupt  # batch runs redo the job later rather than keep a partial result
    wall = time.perf_counter() - wall_start
    images = result.image.cpu()
    return [
        _write_result(job, images[i : i + 1], _job_result(result, i), weights, device, wall)
        for i, job in enumerate(jobs)
    ]


def _job_result(result: OptimizeResult, index: int) -> OptimizeResult:
    """One job's view of a batch's optimization."""
    if result.image.shape[0] == 1:
        return result
    return dataclasses.replace(
        result,
        image=result.image[index : index + 1],
        loss=result.losses[index],
        losses=(result.losses[index],),
        terms=result.terms[index : index + 1],
        start_losses=result.start_losses[index : index + 1],
        failures=result.failures[index : index + 1],
        history=[p.job(index) for p in result.history],
    )


def _style_size(
    size: tuple[int, int], output: tuple[int, int], config: StylizeConfig
) -> tuple[int, int]:
    """The size a style image is used at, at the final scale (W, H)."""
    return resized_shape(size, config.style_edge(max(output)))


def _levels(config: StylizeConfig, history: list[Progress]) -> list[dict[str, Any]]:
    """Per pyramid level: long edge, steps run and seconds per iteration."""
    levels = []
    previous = 0.0
    for i, edge in enumerate(config.pyramid()):
        mine = [p for p in history if p.scale == i]
        seconds = (mine[-1].elapsed - previous) if mine else 0.0
        previous = mine[-1].elapsed if mine else previous
        levels.append(
            {
                "long_edge": edge,
                "steps": len(mine),
                "seconds_per_iteration": round(seconds / len(mine), 5) if mine else None,
            }
        )
    return levels


def _metadata(
    *,
    config: StylizeConfig,
    weights: Weights,
    device: torch.device,
    inputs: dict[str, list[tuple[Path, tuple[int, int], tuple[int, int]]]],
    output_path: Path,
    result: OptimizeResult,
    wall_seconds: float,
) -> dict[str, Any]:
    history = result.history
    stride = max(1, -(-len(history) // HISTORY_POINTS))
    sampled = history[::stride]
    if history and sampled[-1] is not history[-1]:
        sampled.append(history[-1])
    total, content, style, tv = result.terms[0] if result.terms else (None,) * 4
    return {
        "nst_batch_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": {
            role: [
                {"path": str(path), "original_size": list(orig), "size": list(size)}
                for path, orig, size in items
            ]
            for role, items in inputs.items()
        },
        "output": {"path": str(output_path), "size": list(result.image.shape[-1:-3:-1])},
        "parameters": dataclasses.asdict(config),
        "pyramid": _levels(config, history),
        "weights": {
            "source": weights.source.name,
            "sha256": weights.sha256,
            "preprocessing": weights.source.preprocessing,
        },
        "device": str(device),
        "precision": resolve_precision(config.model.precision, device),
        "torch_version": torch.__version__,
        "wall_seconds": round(wall_seconds, 3),
        "optimize_seconds": round(result.elapsed, 3),
        "seconds_per_iteration": round(result.elapsed / result.steps, 5) if result.steps else None,
        "steps_completed": result.steps,
        "stop_reason": result.stop_reason,
        "interrupted": result.interrupted,
        # false: the saved image is not better than the start (why: nst_batch.engine.lbfgs)
        "converged": result.converged,
        **({} if result.converged else {"convergence": "; ".join(filter(None, result.failures))}),
        "final_loss": {"total": total, "content": content, "style": style, "tv": tv},
        "loss_history": [
            {"step": p.step, "loss": p.loss, "content": p.content, "style": p.style, "tv": p.tv}
            for p in sampled
        ],
    }
