"""The model pool: loaded feature stacks shared by the jobs of one process, and the forward pass
that computes targets (torch, or the same stack exported to ONNX Runtime)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nst_batch.engine.model import ModelConfig, load_model
from nst_batch.engine.vgg import VGG19Features
from nst_batch.engine.weights import Weights, default_cache_dir
from nst_batch.errors import ConfigError, NstError
from nst_batch.export import (
    ExportConfig,
    OnnxFeatures,
    SessionConfig,
    check_engine_parity,
    export_onnx,
    read_info,
)

# Targets backend per device for targets_backend="auto": ONNX Runtime's CPU forward pass takes
# 0.65-0.71x torch's time (benchmarks/results/targets-cpu.md); on CUDA torch (not yet measured).
AUTO_TARGETS_BACKEND = {"cpu": "onnx", "cuda": "torch"}


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
        assert self.check_onnx is not None
        key = (config, str(device))
        info = read_info(self.check_onnx)
        model, weights = self._load(config, info.layers, device)
        checks = check_engine_parity(
            self.check_onnx, model, weights.sha256, weights.source.name, config.pooling
        )
        self._checked.add(key)
        return checks

    def target_features(
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
    provider = str(device) if device.type == "cuda" else "cpu"  # "cuda:N": that GPU
    session = OnnxFeatures(path, SessionConfig(provider))

    def features(image: Tensor) -> dict[str, Tensor]:  # (B, 3, H, W) -> {layer: (B, C, h, w)}
        return {k: v.to(device) for k, v in session(image).items()}

    return features
