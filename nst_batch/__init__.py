"""nst-batch: batch neural style transfer (Gatys et al.) with real VGG19 weights."""

__version__ = "0.2.0"

from nst_batch.engine.losses import LossConfig
from nst_batch.engine.optimize import OptimConfig, Progress
from nst_batch.errors import ConfigError, ImageError, ManifestError, NstError, WeightsError
from nst_batch.manifest import ManifestConfig, Report, RunCallbacks, Shard, run_manifest
from nst_batch.presets import PRESETS
from nst_batch.stylize import (
    ModelConfig,
    OutputConfig,
    StylizeConfig,
    StylizeResult,
    build_config,
    stylize,
)

__all__ = [
    "PRESETS",
    "ConfigError",
    "ImageError",
    "LossConfig",
    "ManifestConfig",
    "ManifestError",
    "ModelConfig",
    "NstError",
    "OptimConfig",
    "OutputConfig",
    "Progress",
    "Report",
    "RunCallbacks",
    "Shard",
    "StylizeConfig",
    "StylizeResult",
    "WeightsError",
    "__version__",
    "build_config",
    "run_manifest",
    "stylize",
]
