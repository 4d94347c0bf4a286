"""ONNX export of the truncated VGG19 feature stack and ONNX Runtime parity checks.

``export_onnx`` writes the model (weights as external data, provenance in ``metadata_props``);
``verify`` compares ONNX Runtime with the torch engine per layer; ``check_engine_parity`` is the
start-up check behind ``--check-onnx``; ``OnnxFeatures`` runs an export like the torch module and
knows which execution provider really runs it.
"""

from nst_batch.export.model import (
    DEFAULT_LAYERS,
    ExportConfig,
    ExportInfo,
    export_onnx,
    read_info,
)
from nst_batch.export.runtime import OnnxFeatures, SessionConfig, parse_provider
from nst_batch.export.verify import (
    TOLERANCES,
    LayerCheck,
    VerifyConfig,
    VerifyReport,
    check_engine_parity,
    parse_sizes,
    verify,
)

__all__ = [
    "DEFAULT_LAYERS",
    "TOLERANCES",
    "ExportConfig",
    "ExportInfo",
    "LayerCheck",
    "OnnxFeatures",
    "SessionConfig",
    "VerifyConfig",
    "VerifyReport",
    "check_engine_parity",
    "export_onnx",
    "parse_provider",
    "parse_sizes",
    "read_info",
    "verify",
]
