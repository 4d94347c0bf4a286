"""The model builder: a frozen VGG19 feature stack with real weights on a device.

Beside the layer table (:mod:`nst_batch.engine.vgg`) as torchvision's ``_vgg`` is beside its
``cfgs``: :class:`ModelConfig` says which weights, pooling, device and precision; :func:`load_model`
builds the truncated stack.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nst_batch.engine.graphs import Precision
from nst_batch.engine.vgg import Pooling, VGG19Features, load_state
from nst_batch.engine.weights import Weights, load_weights, resolve_source
from nst_batch.errors import ConfigError
from nst_batch.validation import check_fields

DEVICE_TYPES = ("cpu", "cuda", "mps")


@dataclass(frozen=True)
class ModelConfig:
    weights: str = "bundled"  # "bundled", "torchvision" or a path to a torchvision-layout file
    pooling: Pooling = "max"  # max or average pooling between the VGG blocks
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N"
    channels_last: bool = True  # NHWC activations; measured faster on CPU (benchmarks/cpu.py)
    targets_backend: str = "auto"  # "torch", "onnx" (ONNX Runtime) or "auto" (per device)
    # "auto" (bf16 where the hardware has it natively, else fp32), "fp32", "tf32" (CUDA
    # convolutions) or "bf16" (autocast for the convolutions; Grams and losses in float32)
    precision: Precision = "auto"
    cuda_graphs: bool = True  # replay the evaluation as a CUDA graph on CUDA

    def __post_init__(self) -> None:
        check_fields(self)  # choices (Literal): ConfigError naming the field
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
