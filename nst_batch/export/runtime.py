"""An nst-batch export in ONNX Runtime: the session, called like the torch feature stack, and the
execution provider it really runs on.

ONNX Runtime lists a provider when its build has one (onnxruntime-gpu always lists TensorRT and
CUDA), not when it can start it: a provider whose libraries are missing (TensorRT, or the CUDA and
cuDNN versions the build needs) is dropped when the session is created, at most with a log line,
and the session runs on the next one in the list, down to the CPU. So the provider in use is read
back from the session (``get_providers()[0]``): an explicit request that ONNX Runtime downgraded is
an OnnxError; ``auto`` takes the best provider that started and says which it skipped.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from nst_batch.errors import ConfigError, OnnxError
from nst_batch.export.model import INPUT_NAME, external_files, read_info

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
ORDER = ("tensorrt", "cuda", "cpu")  # fastest first; each falls back to the ones after it
# What to install when a provider is listed but does not start.
MISSING = {
    "tensorrt": "the TensorRT libraries are missing or do not match this onnxruntime-gpu build",
    "cuda": "the CUDA and cuDNN libraries this onnxruntime-gpu build needs are missing or of "
    "another major version (`pip install onnxruntime-gpu[cuda,cudnn]` brings them), or no GPU "
    "is visible",
}
ProviderEntry = str | tuple[str, dict[str, object]]  # one item of InferenceSession(providers=)


def parse_provider(name: str) -> tuple[str, int | None]:
    """``"cuda:1"`` -> ``("cuda", 1)``; ``"cpu"`` -> ``("cpu", None)``; ``"auto"`` as it is."""
    kind, colon, index = name.strip().lower().partition(":")
    if kind not in (*PROVIDERS, "auto") or (
        colon and not (kind in ("cuda", "tensorrt") and index.isdigit())
    ):
        raise ConfigError(
            f"unknown provider {name!r}; use auto, cpu, cuda, cuda:N, tensorrt or tensorrt:N"
        )
    return kind, int(index) if colon else None


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def provider_chain(kind: str) -> tuple[str, ...]:
    """The providers a session for ``kind`` is created with, best first: ``kind`` and those after
    it in (TensorRT, CUDA, CPU) that this ONNX Runtime build lists; ``auto`` starts at TensorRT."""
    have = available_providers()
    if kind != "auto" and PROVIDERS[kind] not in have:
        raise ConfigError(
            f"ONNX Runtime here has no {PROVIDERS[kind]} (it has {', '.join(have)}); "
            f"CUDA and TensorRT need the onnxruntime-gpu package (the `gpu` extra){install_hint()}"
        )
    start = 0 if kind == "auto" else ORDER.index(kind)
    return tuple(k for k in ORDER[start:] if PROVIDERS[k] in have)


def runtime_packages() -> set[str]:
    """The ONNX Runtime distributions installed; they share one `onnxruntime` folder."""
    found = set()
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        found.add(name)
    return found


def install_hint() -> str:
    if {"onnxruntime", "onnxruntime-gpu"} <= runtime_packages():
        return (
            "; onnxruntime and onnxruntime-gpu are both installed and overwrite each other's "
            "files: `pip uninstall -y onnxruntime onnxruntime-gpu`, then install one of them"
        )
    return ""


def provider_used(
    got: Sequence[str], kind: str, chain: Sequence[str], device_id: int | None
) -> tuple[str, tuple[str, ...]]:
    """The provider a new session runs on (``"cuda:1"``) and the notes on how it differs from
    the request, given ``got``, the session's ``get_providers()``. Raises OnnxError when an
    explicit request was downgraded; ``auto`` gets a note naming the providers it skipped."""
    by_name = {v: k for k, v in PROVIDERS.items()}
    first = got[0] if got else "no provider"
    used = by_name.get(first)
    if used is None or (used != chain[0] and (kind != "auto" or used not in chain)):
        on = "" if device_id is None else f" on device {device_id}"
        asked = PROVIDERS.get(kind, "auto") + on
        why = MISSING.get(kind, "none of the providers it lists started")
        raise OnnxError(
            f"asked ONNX Runtime for {asked}, but it created the session on {first}: "
            f"{why}{install_hint()}"
        )
    label = used if used == "cpu" or device_id is None else f"{used}:{device_id}"
    if used == chain[0]:
        return label, ()
    skipped = chain[: chain.index(used)]
    why = "; ".join(f"{PROVIDERS[k]}: {MISSING[k]}" for k in skipped)
    note = (
        f"provider auto: ONNX Runtime lists {', '.join(PROVIDERS[k] for k in skipped)} but could "
        f"not start it ({why}); running on {first}"
    )
    return label, (note,)


@dataclass(frozen=True)
class SessionConfig:
    provider: str = "cpu"  # auto, cpu, cuda, cuda:N, tensorrt or tensorrt:N
    fp16: bool = False  # TensorRT only: build fp16 engines
    trt_cache: Path | None = None  # TensorRT engine cache folder; None = beside the model

    def __post_init__(self) -> None:
        parse_provider(self.provider)


class OnnxFeatures:
    """An exported feature stack in ONNX Runtime, called like the torch module.

    ``features(image)`` with ``image`` (N, 3, H, W) float32 returns ``{layer: (N, C, h, w)}``
    as CPU tensors. ``provider`` is what the session runs on ("cpu", "cuda", "cuda:1",
    "tensorrt", ...), never merely what was asked for; ``notes`` says why ``auto`` skipped any.
    """

    def __init__(self, path: Path, config: SessionConfig | None = None) -> None:
        import onnxruntime as ort

        config = config or SessionConfig()
        self.path = Path(path)
        self.info = read_info(self.path)
        for name in external_files(self.path):
            if not (self.path.parent / name).is_file():
                raise OnnxError(
                    f"{path}: its weights file {name} is missing (an export's .onnx and "
                    ".onnx.data files must stay together under their original names)"
                )
        kind, device_id = parse_provider(config.provider)
        chain = provider_chain(kind)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: ORT warns about unused initializers
        providers = _provider_list(self.path, chain, device_id or 0, config)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as err:  # ORT raises its own Fail/InvalidGraph types
            raise OnnxError(f"{path}: ONNX Runtime cannot load it: {err}") from None
        self.requested = config.provider
        self.provider, self.notes = provider_used(
            self.session.get_providers(), kind, chain, device_id
        )
        self.layers = self.info.layers

    def __call__(self, image: Tensor) -> dict[str, Tensor]:
        array = np.ascontiguousarray(image.detach().float().cpu().numpy())  # (N, 3, H, W)
        outputs = self.session.run(list(self.layers), {INPUT_NAME: array})
        return {name: torch.from_numpy(out) for name, out in zip(self.layers, outputs, strict=True)}

    def timed(self, image: Tensor) -> tuple[dict[str, Tensor], float]:
        start = time.perf_counter()
        out = self(image)
        return out, time.perf_counter() - start


def _provider_list(
    path: Path, chain: Sequence[str], device_id: int, config: SessionConfig
) -> list[ProviderEntry]:
    """ONNX Runtime's ``providers`` argument for ``chain``, each GPU provider on ``device_id``."""
    entries: list[ProviderEntry] = []
    for kind in chain:
        if kind == "cpu":
            entries.append(PROVIDERS["cpu"])
        elif kind == "cuda":
            # TF32 off, so CUDA numbers are fp32 numbers and the fp32 tolerance means what it says.
            entries.append((PROVIDERS["cuda"], {"device_id": device_id, "use_tf32": 0}))
        else:
            cache = config.trt_cache or path.parent / f"{path.stem}.trt-cache"
            cache.mkdir(parents=True, exist_ok=True)
            options: dict[str, object] = {
                "device_id": device_id,
                "trt_fp16_enable": config.fp16,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(cache),
            }
            entries.append((PROVIDERS["tensorrt"], options))
    return entries
