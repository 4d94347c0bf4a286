"""Export the truncated VGG19 feature stack to ONNX and read an export back.

The exported graph is exactly the engine's :class:`~nst_batch.engine.vgg.VGG19Features`: input
``image`` float32 (N, 3, H, W), RGB in [0, 1] with N, H and W dynamic; the weights' normalization
inside; one output per requested layer, named after it. Weights are stored as ONNX external data
(``MODEL.onnx.data`` beside the model) and ``metadata_props`` record what the export was made from,
so a later ``verify`` or ``--check-onnx`` can rebuild the same torch model and compare.
Running an export in ONNX Runtime is :mod:`nst_batch.export.runtime`.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from nst_batch.engine.model import ModelConfig, load_model
from nst_batch.engine.vgg import LAYER_INDEX, Pooling, VGG19Features, layer_spec
from nst_batch.errors import ConfigError, OnnxError
from nst_batch.images import new_file_mode
from nst_batch.version import __version__

INPUT_NAME = "image"
DEFAULT_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1", "relu4_2")
DEFAULT_OPSET = 17


@dataclass(frozen=True)
class ExportConfig:
    layers: tuple[str, ...] = DEFAULT_LAYERS  # one ONNX output each, in this order
    weights: str = "bundled"  # as --weights: "bundled", "torchvision" or a file path
    pooling: Pooling = "max"
    opset: int = DEFAULT_OPSET

    def __post_init__(self) -> None:
        if not self.layers:
            raise ConfigError("export needs at least one layer")
        if len(set(self.layers)) != len(self.layers):
            raise ConfigError(f"layer list has duplicates: {', '.join(self.layers)}")
        for name in self.layers:
            try:
                layer_spec(name)
            except ValueError as err:
                raise ConfigError(str(err)) from None
        if not 13 <= self.opset <= 21:
            raise ConfigError(f"opset must be between 13 and 21, not {self.opset}")


@dataclass(frozen=True)
class ExportInfo:
    """What an export was made from; stored as the model's ``metadata_props``."""

    layers: tuple[str, ...]
    weights_source: str
    weights_sha256: str
    preprocessing: str
    pooling: Pooling
    opset: int
    nst_batch_version: str

    def props(self) -> dict[str, str]:
        return {
            "nst_batch.layers": ",".join(self.layers),
            "nst_batch.weights_source": self.weights_source,
            "nst_batch.weights_sha256": self.weights_sha256,
            "nst_batch.preprocessing": self.preprocessing,
            "nst_batch.pooling": self.pooling,
            "nst_batch.opset": str(self.opset),
            "nst_batch.version": self.nst_batch_version,
            "nst_batch.input": f"{INPUT_NAME}: float32 (N, 3, H, W), RGB in [0, 1]",
        }

    @classmethod
    def from_props(cls, props: Mapping[str, str], where: Path) -> ExportInfo:
        try:
            return cls(
                layers=tuple(props["nst_batch.layers"].split(",")),
                weights_source=props["nst_batch.weights_source"],
                weights_sha256=props["nst_batch.weights_sha256"],
                preprocessing=props["nst_batch.preprocessing"],
                pooling=props["nst_batch.pooling"],  # type: ignore[arg-type]
                opset=int(props["nst_batch.opset"]),
                nst_batch_version=props["nst_batch.version"],
            )
        except (KeyError, ValueError) as err:
            raise OnnxError(
                f"{where}: not an nst-batch export (metadata {err} missing or bad); "
                "make one with `nst-batch export`"
            ) from None


class _Outputs(nn.Module):
    """The feature dict as a tuple in a fixed order, since ONNX outputs are positional."""

    def __init__(self, features: VGG19Features, layers: Sequence[str]) -> None:
        super().__init__()
        self.features = features
        self.layers = tuple(layers)

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:  # image: (N, 3, H, W)
        out = self.features(image)
        return tuple(out[name] for name in self.layers)


def export_onnx(output: Path, config: ExportConfig) -> ExportInfo:
    """Write ``output`` (+ ``output.data``), check it with ``onnx.checker``; returns its metadata.

    Both files are written under temporary names and renamed into place (data first), so a
    crash never leaves a model that points at missing or partial weights.
    """
    import onnx

    output = Path(output)
    if output.suffix != ".onnx":
        raise ConfigError(f"{output}: the export's name must end in .onnx")
    if not output.parent.is_dir():
        raise ConfigError(f"{output}: folder {output.parent} does not exist")
    model_config = ModelConfig(
        weights=config.weights, pooling=config.pooling, device="cpu", channels_last=False
    )
    features, weights = load_model(model_config, config.layers, torch.device("cpu"))
    info = ExportInfo(
        layers=config.layers,
        weights_source=weights.source.name,
        weights_sha256=weights.sha256,
        preprocessing=weights.source.preprocessing,
        pooling=config.pooling,
        opset=config.opset,
        nst_batch_version=__version__,
    )
    # Dynamic N, H, W; each output's spatial size follows the input's (its own symbols, since
    # pooling floors odd sizes).
    dynamic = {INPUT_NAME: {0: "N", 2: "H", 3: "W"}}
    for name in config.layers:
        dynamic[name] = {0: "N", 2: f"{name}_H", 3: f"{name}_W"}
    stride = max(layer_spec(n).scale for n in config.layers)
    example = torch.rand(1, 3, 2 * stride, 3 * stride)  # any size; axes are dynamic
    data_name = output.name + ".data"
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.") as tmp:
        raw = Path(tmp) / "raw.onnx"
        with warnings.catch_warnings():
            # torch 2.9+ warns that this (TorchScript) exporter is legacy; the torch.export-based
            # one needs onnxscript, which nst-batch does not depend on.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Outputs(features, config.layers),
                (example,),
                str(raw),
                input_names=[INPUT_NAME],
                output_names=list(config.layers),
                dynamic_axes=dynamic,
                opset_version=config.opset,
                do_constant_folding=True,
                dynamo=False,
            )
        proto = onnx.load(str(raw))
        proto.doc_string = "nst-batch VGG19 features; see metadata_props"
        for key, value in info.props().items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        staged = Path(tmp) / output.name
        onnx.save_model(
            proto,
            str(staged),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_name,
            size_threshold=0,
        )
        try:
            onnx.checker.check_model(str(staged), full_check=True)
        except onnx.checker.ValidationError as err:  # pragma: no cover - exporter bug
            raise OnnxError(f"the exported model fails onnx.checker: {err}") from None
        for staged_file in (staged.parent / data_name, staged):
            os.chmod(staged_file, new_file_mode())  # onnx writes its data file 0600
            _fsync(staged_file)
        os.replace(staged.parent / data_name, output.parent / data_name)
        os.replace(staged, output)
    return info


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def read_info(path: Path) -> ExportInfo:
    """The metadata of an nst-batch export; OnnxError for a missing, corrupt or foreign file."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise OnnxError(f"{path}: no such ONNX model")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises DecodeError and others for garbage
        raise OnnxError(f"{path}: not a readable ONNX model ({type(err).__name__})") from None
    info = ExportInfo.from_props({p.key: p.value for p in proto.metadata_props}, path)
    inputs = [i.name for i in proto.graph.input]
    if inputs != [INPUT_NAME]:
        raise OnnxError(f"{path}: expected one input named {INPUT_NAME!r}, found {inputs}")
    outputs = tuple(o.name for o in proto.graph.output)
    if outputs != info.layers:
        raise OnnxError(
            f"{path}: outputs {', '.join(outputs)} do not match the recorded layers "
            f"{', '.join(info.layers)}"
        )
    for name in info.layers:
        if name not in LAYER_INDEX:
            raise OnnxError(f"{path}: output {name!r} is not a VGG19 layer")
    return info


def external_files(path: Path) -> set[str]:
    """Names of the external data files an ONNX model refers to (relative to its folder)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {
        entry.value
        for tensor in proto.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
