"""Feature parity between an ONNX export (in ONNX Runtime) and the torch engine.

The error measure per layer is the *scaled* maximum error ``max|onnx - torch| / max|torch|``:
ReLU features are mostly exact zeros, where an element-wise relative error is meaningless, and
what matters for the losses is the error relative to the feature map's own magnitude. The table
also shows the plain maximum absolute error. The torch side always runs in full float32
(:func:`tf32_off`), so parity on Ampere and later GPUs is not judged against TF32 numbers.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from nst_batch.demo import swirl_painting
from nst_batch.engine.model import ModelConfig, load_model
from nst_batch.errors import ConfigError, OnnxError, ParityError
from nst_batch.export.model import ExportInfo, read_info
from nst_batch.export.runtime import OnnxFeatures, SessionConfig, parse_provider
from nst_batch.images import open_rgb, to_tensor

Precision = Literal["auto", "fp32", "fp16"]

# Scaled max error allowed per (provider, precision). fp32 on CPU is the same arithmetic in another
# order: errors are ~1e-7 (measured), 1e-4 leaves room for other CPUs' kernels. CUDA runs with TF32
# off but other convolution algorithms (1e-3). TensorRT fp16 keeps 10 bits of mantissa through
# 16 conv layers: 3e-2 (stated, not yet measured on a GPU here).
TOLERANCES: dict[tuple[str, str], float] = {
    ("cpu", "fp32"): 1e-4,
    ("cuda", "fp32"): 1e-3,
    ("tensorrt", "fp32"): 1e-3,
    ("tensorrt", "fp16"): 3e-2,
}
# The engine's probe runs with TF32 off (tf32_off), so on CUDA it is float32 in other
# convolution algorithms than ONNX Runtime's CPU result: CUDA fp32's 1e-3 (not yet measured).
ENGINE_TOLERANCE = {"cpu": 1e-4, "cuda": 1e-3}


@dataclass(frozen=True)
class VerifyConfig:
    provider: str = "auto"  # auto, cpu, cuda, cuda:N, tensorrt or tensorrt:N
    precision: Precision = "auto"  # auto: fp16 for TensorRT, fp32 otherwise
    sizes: tuple[tuple[int, int], ...] = ((64, 64), (256, 256), (517, 311))  # (W, H)
    images: tuple[Path, ...] = ()  # real pictures to add to the generated inputs
    weights: str | None = None  # the engine's weights; None = the source the export records
    seed: int = 0
    trt_cache: Path | None = None


@dataclass(frozen=True)
class LayerCheck:
    size: tuple[int, int]  # (W, H)
    layer: str
    max_abs: float
    max_rel: float  # max |onnx - torch| / max |torch|
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_rel <= self.tolerance


@dataclass(frozen=True)
class Timing:
    size: tuple[int, int]
    batch: int
    onnx_seconds: float
    torch_seconds: float


@dataclass(frozen=True)
class VerifyReport:
    path: Path
    info: ExportInfo
    provider: str  # the provider ONNX Runtime ran on ("cuda:1"), not the one asked for
    precision: str
    tolerance: float
    inputs: tuple[str, ...]  # what each batch row was
    checks: tuple[LayerCheck, ...]
    timings: tuple[Timing, ...]
    notes: tuple[str, ...] = ()  # e.g. which providers `auto` skipped, and why

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> tuple[LayerCheck, ...]:
        return tuple(c for c in self.checks if not c.ok)


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """``"64,256,517x311"`` -> ``((64, 64), (256, 256), (517, 311))`` as (W, H)."""
    sizes: list[tuple[int, int]] = []
    for part in (p.strip().lower() for p in text.split(",")):
        if not part:
            continue
        w, _, h = part.partition("x")
        try:
            size = (int(w), int(h or w))
        except ValueError:
            raise ConfigError(f"sizes: expected 64 or 517x311, not {part!r}") from None
        if min(size) < 32 or max(size) > 4096:
            raise ConfigError(f"sizes: {part} is outside 32..4096 pixels")
        sizes.append(size)
    if not sizes:
        raise ConfigError(f"sizes: {text!r} names no size")
    return tuple(sizes)


def probe_inputs(
    size: tuple[int, int], images: Sequence[Path], seed: int
) -> tuple[list[str], Tensor]:
    """The inputs at one size as a batch (N, 3, H, W): uniform noise, a generated painting, and
    any given pictures, each resized to exactly ``size``."""

    w, h = size
    noise = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))
    names, batch = ["noise"], [noise]
    painting = swirl_painting(max(w, h), seed=seed, strokes=800).resize((w, h))
    names.append("painting")
    batch.append(to_tensor(painting))
    for path in images:
        names.append(Path(path).name)
        batch.append(to_tensor(open_rgb(Path(path)).resize((w, h))))
    return names, torch.cat(batch)


def compare(
    onnx_out: dict[str, Tensor], torch_out: dict[str, Tensor], size: tuple[int, int], tol: float
) -> list[LayerCheck]:
    checks = []
    for layer, ref in torch_out.items():
        got = onnx_out[layer].to(ref.device, torch.float32)
        ref = ref.float()
        if got.shape != ref.shape:
            raise ParityError(
                f"{layer}: ONNX output shape {tuple(got.shape)} != torch {tuple(ref.shape)}"
            )
        max_abs = float((got - ref).abs().max())
        scale = float(ref.abs().max())
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
        if not np.isfinite(max_abs):
            max_rel = float("inf")
        checks.append(LayerCheck(size, layer, max_abs, max_rel, tol))
    return checks


def verify(
    path: Path, config: VerifyConfig, progress: Callable[[str], None] | None = None
) -> VerifyReport:
    """Run the export in ONNX Runtime and the torch engine (CPU, fp32) on the same inputs.

    The report names the provider ONNX Runtime really ran on; ``progress`` also gets the notes on
    a provider ``auto`` skipped. An explicit provider that ONNX Runtime downgraded is an OnnxError.
    """
    path = Path(path)
    info = read_info(path)
    kind, _ = parse_provider(config.provider)
    if config.precision == "fp16" and kind not in ("auto", "tensorrt"):
        raise ConfigError("precision fp16 needs the tensorrt provider")
    reference_config = ModelConfig(
        weights=config.weights or info.weights_source,
        pooling=info.pooling,
        device="cpu",
        channels_last=False,
    )
    model, weights = load_model(reference_config, info.layers, torch.device("cpu"))
    check_same_weights(path, info, weights.sha256, weights.source.name)
    fp16 = config.precision != "fp32"  # only TensorRT reads it: auto is fp16 there
    session = OnnxFeatures(path, SessionConfig(config.provider, fp16, config.trt_cache))
    used, _ = parse_provider(session.provider)
    precision = config.precision
    if precision == "auto":
        precision = "fp16" if used == "tensorrt" else "fp32"
    if (used, precision) not in TOLERANCES:
        raise ConfigError(f"precision {precision} needs tensorrt; ONNX Runtime runs on {used}")
    tol = TOLERANCES[used, precision]
    for note in session.notes:
        if progress is not None:
            progress(note)
    checks: list[LayerCheck] = []
    timings: list[Timing] = []
    names: list[str] = []
    for size in config.sizes:
        names, batch = probe_inputs(size, config.images, config.seed)
        session(batch)  # warm-up at the timed shape: TensorRT builds an engine per new shape
        onnx_out, onnx_s = session.timed(batch)
        with torch.no_grad(), tf32_off():
            start = time.perf_counter()
            torch_out = model(batch)
            torch_s = time.perf_counter() - start
        checks += compare(onnx_out, torch_out, size, tol)
        timings.append(Timing(size, batch.shape[0], onnx_s, torch_s))
        if progress is not None:
            progress(f"{size[0]}x{size[1]}: compared {len(names)} inputs")
    return VerifyReport(
        path,
        info,
        session.provider,
        precision,
        tol,
        tuple(names),
        tuple(checks),
        tuple(timings),
        session.notes,
    )


@contextlib.contextmanager
def tf32_off() -> Iterator[None]:
    """Full float32 CUDA matmuls and cuDNN convolutions inside; the caller's settings after.

    Through the legacy flags (``torch.backends.cuda.matmul.allow_tf32``,
    ``torch.backends.cudnn.allow_tf32``), as the engine sets them; only those that were on are
    turned off and back on. A ``set_float32_matmul_precision("medium")``, which ``allow_tf32``
    cannot express, is set again. Where the flags were set through torch's newer
    ``fp32_precision`` API, reading the legacy ones raises: then that API is used instead.
    """
    backends = torch.backends
    try:
        legacy = (backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32)
    except RuntimeError:  # torch 2.9+ refuses to read them after a mix of the two APIs
        owners = (backends.cuda.matmul, backends.cudnn.conv)
        saved = [owner.fp32_precision for owner in owners]
        try:
            for owner in owners:
                owner.fp32_precision = "ieee"
            yield
        finally:
            for owner, value in zip(owners, saved, strict=True):
                owner.fp32_precision = value
        return
    try:
        precision = torch.get_float32_matmul_precision()
    except RuntimeError:
        precision = None
    try:
        if legacy[0]:
            backends.cuda.matmul.allow_tf32 = False
        if legacy[1]:
            backends.cudnn.allow_tf32 = False
        yield
    finally:
        if legacy[0]:
            backends.cuda.matmul.allow_tf32 = True
        if legacy[1]:
            backends.cudnn.allow_tf32 = True
        if precision == "medium":
            torch.set_float32_matmul_precision(precision)


def check_same_weights(path: Path, info: ExportInfo, sha256: str, source: str) -> None:
    if info.weights_sha256 != sha256:
        raise OnnxError(
            f"{path} was exported from other weights ({info.weights_source}, sha256 "
            f"{info.weights_sha256[:12]}) than the engine's ({source}, {sha256[:12]}); "
            "re-export it with the same --weights"
        )


def check_engine_parity(
    path: Path,
    model: torch.nn.Module,
    weights_sha256: str,
    weights_source: str,
    pooling: str,
) -> list[LayerCheck]:
    """The start-up check behind ``--check-onnx``: the engine's own feature stack (its device,
    layout and decoded weights) against the export in ONNX Runtime on the CPU, on a probe image.

    ``model`` must output at least the export's layers. Raises ParityError listing the layers out
    of tolerance, so a corrupt weights file or a broken driver stops a run before it makes art.
    """
    info = read_info(path)
    check_same_weights(path, info, weights_sha256, weights_source)
    if info.pooling != pooling:
        raise OnnxError(
            f"{path} was exported with {info.pooling} pooling, the engine uses {pooling}"
        )
    device = next(model.parameters()).device
    tol = ENGINE_TOLERANCE.get(device.type, ENGINE_TOLERANCE["cuda"])
    _, probe = probe_inputs((96, 64), (), seed=0)
    onnx_out = OnnxFeatures(path, SessionConfig("cpu"))(probe)
    with torch.no_grad(), tf32_off():
        engine_out = model(probe.to(device))
    missing = [name for name in info.layers if name not in engine_out]
    if missing:
        raise OnnxError(f"the engine's model lacks the export's layers {', '.join(missing)}")
    checks = compare(onnx_out, {n: engine_out[n] for n in info.layers}, (96, 64), tol)
    bad = [c for c in checks if not c.ok]
    if bad:
        detail = ", ".join(f"{c.layer} {c.max_rel:.2e}" for c in bad)
        raise ParityError(
            f"the engine's features differ from {path} beyond {tol:g} (scaled max error: "
            f"{detail}); the weights file, the export or the device is broken"
        )
    return checks
